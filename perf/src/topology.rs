//! The queues and exchange a run uses: their names, where producer i
//! publishes and consumer j consumes, declaring (and purging) them first and
//! deleting them at the end.

use anyhow::Result;

use crate::client::Conn;
use crate::{Args, ExchangeType};

/// Queue names and where each producer publishes / each consumer consumes.
pub struct Topology {
    pub queues: Vec<String>,
    pub kind: ExchangeType,
    pub exchange: String,
    /// Quorum queues (`--quorum`).
    pub quorum: bool,
}

impl Topology {
    pub fn new(args: &Args) -> Topology {
        let queues = if args.queues == 1 {
            vec![args.queue.clone()]
        } else {
            (0..args.queues)
                .map(|i| format!("{}-{i}", args.queue))
                .collect()
        };
        Topology {
            queues,
            kind: args.exchange_type,
            exchange: match args.exchange_type {
                ExchangeType::Direct => String::new(),
                ExchangeType::Fanout => args.exchange.clone(),
            },
            quorum: args.quorum,
        }
    }

    pub fn producer_target(&self, i: usize) -> (String, String) {
        match self.kind {
            ExchangeType::Direct => (String::new(), self.queues[i % self.queues.len()].clone()),
            ExchangeType::Fanout => (self.exchange.clone(), String::new()),
        }
    }

    pub fn consumer_queue(&self, j: usize) -> String {
        self.queues[j % self.queues.len()].clone()
    }

    /// Copies of each published message the queues receive.
    pub fn fanout_factor(&self) -> u64 {
        match self.kind {
            ExchangeType::Direct => 1,
            ExchangeType::Fanout => self.queues.len() as u64,
        }
    }

    pub async fn declare(&self, conn: &mut Conn, durable: bool, purge: bool) -> Result<()> {
        if self.kind == ExchangeType::Fanout {
            conn.exchange_declare(&self.exchange, "fanout", durable)
                .await?;
        }
        for q in &self.queues {
            conn.queue_declare(q, durable || self.quorum, self.quorum)
                .await?;
            if self.kind == ExchangeType::Fanout {
                conn.queue_bind(q, &self.exchange, "").await?;
            }
            if purge {
                conn.queue_purge(q).await?;
            }
        }
        Ok(())
    }

    pub async fn delete(&self, conn: &mut Conn) -> Result<()> {
        for q in &self.queues {
            conn.queue_delete(q).await?;
        }
        if self.kind == ExchangeType::Fanout {
            conn.exchange_delete(&self.exchange).await?;
        }
        Ok(())
    }

    /// Messages ready in all queues.
    pub async fn ready(&self, conn: &mut Conn, durable: bool) -> Result<u64> {
        let mut n = 0;
        for q in &self.queues {
            n += conn
                .queue_declare(q, durable || self.quorum, self.quorum)
                .await? as u64;
        }
        Ok(n)
    }
}
