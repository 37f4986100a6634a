//! Policy matching, merging and precedence against queue arguments.

use super::*;
use amq_protocol::types::{AMQPValue, FieldTable};

fn policy(name: &str, body: Value) -> Arc<Policy> {
    let Value::Object(m) = body else {
        panic!("not an object")
    };
    Arc::new(parse(PolicyKind::User, "/", name, &m).expect("valid"))
}

fn queue(name: &str, args: &[(&str, AMQPValue)]) -> Queue {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    Queue::new(
        name.into(),
        "/".into(),
        true,
        None,
        false,
        t,
        Arc::new(crate::store::NullStore),
    )
}

#[test]
fn highest_priority_wins_ties_by_name_and_apply_to_filters() {
    let p = Policies::default();
    p.user.write().extend([
        policy(
            "b",
            json!({"pattern": "^q", "definition": {"max-length": 1}, "priority": 1}),
        ),
        policy(
            "a",
            json!({"pattern": "^q", "definition": {"max-length": 2}, "priority": 1}),
        ),
        policy(
            "streams-only",
            json!({"pattern": ".", "definition": {"max-length": 9}, "apply-to": "streams", "priority": 99}),
        ),
        policy(
            "low",
            json!({"pattern": ".", "definition": {"max-length": 3}}),
        ),
        policy(
            "x",
            json!({"pattern": ".", "definition": {"alternate-exchange": "ae"},
                           "apply-to": "exchanges", "priority": 9}),
        ),
        policy(
            "qq",
            json!({"pattern": "^q", "definition": {"delivery-limit": 4},
                            "apply-to": "quorum_queues", "priority": 5}),
        ),
    ]);
    let classic = queue("q1", &[]);
    assert_eq!(p.for_queue(&classic).0.unwrap().name, "a");
    let other = queue("z", &[]);
    assert_eq!(p.for_queue(&other).0.unwrap().name, "low");
    let quorum = queue(
        "q2",
        &[("x-queue-type", AMQPValue::LongString("quorum".into()))],
    );
    assert_eq!(p.for_queue(&quorum).0.unwrap().name, "qq");
    let x = Exchange::new(
        "ex".into(),
        crate::exchange::ExchangeKind::Direct,
        false,
        false,
        false,
        FieldTable::default(),
    );
    assert_eq!(p.for_exchange(&x).unwrap().name, "x");
    p.apply_to_exchange(&x);
    assert_eq!(x.alternate_exchange().as_deref(), Some("ae"));
}

#[test]
fn operator_policy_merges_by_the_lower_value() {
    let p = Policies::default();
    p.user.write().push(policy(
        "u",
        json!({"pattern": ".", "definition": {"max-length": 5, "message-ttl": 100, "dead-letter-exchange": "d"}}),
    ));
    let Value::Object(m) =
        json!({"pattern": ".", "definition": {"max-length": 2, "message-ttl": 1000, "expires": 9}})
    else {
        unreachable!()
    };
    p.operator
        .write()
        .push(Arc::new(parse(PolicyKind::Operator, "/", "o", &m).unwrap()));
    let q = queue("q", &[]);
    let def = p.effective_definition(&q);
    assert_eq!(
        Value::Object(def),
        json!({"max-length": 2, "message-ttl": 100, "dead-letter-exchange": "d", "expires": 9})
    );
    p.apply_to_queue(&q);
    let l = q.limits();
    assert_eq!(
        (l.max_length, l.message_ttl, l.expires),
        (Some(2), Some(100), Some(9))
    );
    assert_eq!(l.dlx.as_deref(), Some("d"));
    // An operator policy takes numeric keys only.
    let Value::Object(bad) = json!({"pattern": ".", "definition": {"dead-letter-exchange": "x"}})
    else {
        unreachable!()
    };
    assert!(parse(PolicyKind::Operator, "/", "o2", &bad).is_err());
}

#[test]
fn arguments_against_policy_as_rabbitmq() {
    let p = Policies::default();
    p.user.write().push(policy(
        "u",
        json!({"pattern": ".", "definition": {"max-length": 5, "overflow": "reject-publish",
               "dead-letter-exchange": "pol", "expires": 50000}}),
    ));
    let classic = queue(
        "c",
        &[
            ("x-max-length", AMQPValue::LongInt(9)),
            ("x-overflow", AMQPValue::LongString("drop-head".into())),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("arg".into()),
            ),
            ("x-expires", AMQPValue::LongInt(60000)),
        ],
    );
    p.apply_to_queue(&classic);
    let l = classic.limits();
    assert_eq!(l.max_length, Some(5), "the lower");
    assert_eq!(l.overflow, Overflow::DropHead, "the argument");
    assert_eq!(l.dlx.as_deref(), Some("arg"), "the argument");
    assert_eq!(l.expires, Some(50000), "the lower");
    let quorum = queue(
        "q",
        &[
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
            ("x-overflow", AMQPValue::LongString("drop-head".into())),
            ("x-expires", AMQPValue::LongInt(40000)),
        ],
    );
    p.apply_to_queue(&quorum);
    let l = quorum.limits();
    assert_eq!(l.overflow, Overflow::RejectPublish, "quorum: the policy");
    assert_eq!(l.expires, Some(50000), "quorum: the policy");
    // No policy any more: back to the arguments.
    p.user.write().clear();
    p.apply_to_queue(&classic);
    assert_eq!(classic.limits().max_length, Some(9));
}
