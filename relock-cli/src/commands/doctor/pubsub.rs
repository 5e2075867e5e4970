//! A release notification actually delivered: subscribe to a relock-prefixed channel, publish
//! on it, and wait for the message, as a waiter and a releasing holder do (sharded on a
//! cluster).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relock::redis::{self, PushKind};

use super::deployment::{Deployment, Kind, Role};
use super::report::Check;
use super::Probe;

const NAME: &str = "pub/sub";
const MESSAGE: &str = "relock doctor";

pub(crate) async fn check(deployment: &mut Deployment, probe: &Probe) -> Check {
    let limit = deployment.timeout;
    let started = Instant::now();
    let (how, delivered) = if deployment.kind == Kind::Cluster {
        (
            "SSUBSCRIBE/SPUBLISH",
            sharded(deployment, probe, limit).await,
        )
    } else {
        ("SUBSCRIBE/PUBLISH", plain(deployment, probe, limit).await)
    };
    match delivered {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "{how} on `{}`: delivered in {:.1} ms",
                probe.channel,
                started.elapsed().as_secs_f64() * 1000.0
            ),
        ),
        Err(why) => Check::failure(
            NAME,
            format!("{how} on `{}`: {why}", probe.channel),
            "waiters are woken by these messages: give the user the channels \
             (`&<prefix>:*`) and the commands, and let nothing between relock and Redis \
             (a proxy) drop pub/sub",
        ),
    }
}

async fn plain(deployment: &mut Deployment, probe: &Probe, limit: Duration) -> Result<(), String> {
    let master = deployment
        .nodes
        .iter_mut()
        .find(|node| node.role == Role::Master)
        .ok_or("no master reached")?;
    let mut pubsub = tokio::time::timeout(limit, master.client.get_async_pubsub())
        .await
        .map_err(|_| format!("no subscriber connection within {limit:?}"))?
        .map_err(|err| format!("subscriber connection failed: {err}"))?;
    tokio::time::timeout(limit, pubsub.subscribe(&probe.channel))
        .await
        .map_err(|_| format!("SUBSCRIBE not confirmed within {limit:?}"))?
        .map_err(|err| format!("SUBSCRIBE failed: {err}"))?;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&probe.channel)
        .arg(MESSAGE)
        .query_async(&mut master.connection)
        .await
        .map_err(|err| format!("PUBLISH failed: {err}"))?;
    let mut messages = pubsub.on_message();
    match tokio::time::timeout(limit, messages.next()).await {
        Ok(Some(message)) if message.get_channel_name() == probe.channel => Ok(()),
        Ok(_) => Err("the subscription ended without the message".to_owned()),
        Err(_) => Err(format!(
            "published to {receivers} subscriber(s), nothing arrived within {limit:?}"
        )),
    }
}

async fn sharded(
    deployment: &mut Deployment,
    probe: &Probe,
    limit: Duration,
) -> Result<(), String> {
    let Some(sharded) = deployment.sharded.as_mut() else {
        return Err("no cluster client".to_owned());
    };
    let mut connection = tokio::time::timeout(limit, sharded.client.get_async_connection())
        .await
        .map_err(|_| format!("no cluster connection within {limit:?}"))?
        .map_err(|err| format!("cluster connection failed: {err}"))?;
    tokio::time::timeout(limit, connection.ssubscribe(&probe.channel))
        .await
        .map_err(|_| format!("SSUBSCRIBE not confirmed within {limit:?}"))?
        .map_err(|err| format!("SSUBSCRIBE failed: {err}"))?;
    let receivers: i64 = redis::cmd("SPUBLISH")
        .arg(&probe.channel)
        .arg(MESSAGE)
        .query_async(&mut connection)
        .await
        .map_err(|err| format!("SPUBLISH failed: {err}"))?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let push = tokio::time::timeout_at(deadline, sharded.pushes.recv())
            .await
            .map_err(|_| {
                format!("published to {receivers} subscriber(s), nothing arrived within {limit:?}")
            })?
            .ok_or("the subscription ended without the message")?;
        let channel = push.data.first().map(super::deployment::text);
        if push.kind == PushKind::SMessage && channel.as_deref() == Some(probe.channel.as_str()) {
            return Ok(());
        }
        // Subscription confirmations arrive here too: wait on.
    }
}
