//! The building blocks every service uses, against a real PostgreSQL: notifications across
//! replicas, page tokens across replicas, and the classification of PostgreSQL errors.

use std::time::Duration;

use quintet::{
    error::Error,
    notify::{Notification, Notifier, notify},
    page_token::PageTokens,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::harness::fresh_pool;

async fn next_message(
    subscription: &mut quintet::notify::Subscription,
    within: Duration,
) -> Option<Notification> {
    tokio::time::timeout(within, subscription.recv_on("jobs"))
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn notifications_reach_every_replica_only_after_commit() {
    let pool = fresh_pool().await;
    let shutdown = CancellationToken::new();
    // Two notifiers on one database stand for two server processes.
    let replica_a = Notifier::start(&pool, &["jobs", "other"], shutdown.clone())
        .await
        .unwrap();
    let replica_b = Notifier::start(&pool, &["jobs"], shutdown.clone())
        .await
        .unwrap();
    let mut on_a = replica_a.subscribe();
    let mut on_b = replica_b.subscribe();

    let mut tx = pool.begin().await.unwrap();
    notify(&mut *tx, "jobs", "job-1").await.unwrap();
    assert_eq!(
        next_message(&mut on_a, Duration::from_millis(300)).await,
        None,
        "not before commit"
    );
    tx.commit().await.unwrap();
    for subscription in [&mut on_a, &mut on_b] {
        match next_message(subscription, Duration::from_secs(5)).await {
            Some(Notification::Message { channel, payload }) => {
                assert_eq!((&*channel, &*payload), ("jobs", "job-1"));
            }
            other => panic!("expected job-1, got {other:?}"),
        }
    }

    let mut tx = pool.begin().await.unwrap();
    notify(&mut *tx, "jobs", "job-2").await.unwrap();
    tx.rollback().await.unwrap();
    notify(&pool, "other", "elsewhere").await.unwrap();
    notify(&pool, "jobs", "job-3").await.unwrap();
    match next_message(&mut on_a, Duration::from_secs(5)).await {
        Some(Notification::Message { payload, .. }) => {
            assert_eq!(&*payload, "job-3", "job-2 was rolled back")
        }
        other => panic!("expected job-3, got {other:?}"),
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_listener_whose_connection_is_killed_resyncs() {
    let pool = fresh_pool().await;
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start(&pool, &["jobs"], shutdown.clone())
        .await
        .unwrap();
    let mut subscription = notifier.subscribe();
    // Kill every other backend of this database: the listening connection among them.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
        .await
        .expect("a resync after the connection died");
    assert_eq!(first, Some(Notification::Resync));
    // And it listens again afterwards.
    let mut delivered = false;
    for _ in 0..50 {
        notify(&pool, "jobs", "after").await.unwrap();
        if let Some(Notification::Message { .. }) =
            next_message(&mut subscription, Duration::from_millis(200)).await
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered);
    shutdown.cancel();
}

#[tokio::test]
async fn page_tokens_from_one_replica_work_on_another() {
    let pool = fresh_pool().await;
    let (a, b) = tokio::join!(PageTokens::load(&pool), PageTokens::load(&pool));
    let (a, b) = (a.unwrap(), b.unwrap());
    let token = a.encode(
        "registry.ListPackages?sort=downloads",
        &(1200i64, "left-pad"),
    );
    let position: Option<(i64, String)> = b
        .decode("registry.ListPackages?sort=downloads", &token)
        .unwrap();
    assert_eq!(position, Some((1200, "left-pad".to_owned())));

    let other_database = PageTokens::load(&fresh_pool().await).await.unwrap();
    let error = other_database
        .decode::<(i64, String)>("registry.ListPackages?sort=downloads", &token)
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn postgres_errors_map_to_the_right_codes() {
    let pool = fresh_pool().await;
    sqlx::raw_sql(
        "CREATE TABLE public.owners (id INT PRIMARY KEY);
         CREATE TABLE public.things (
             name TEXT CONSTRAINT things_name_key UNIQUE,
             owner INT REFERENCES public.owners (id),
             size INT CONSTRAINT things_size_positive CHECK (size > 0),
             label TEXT NOT NULL DEFAULT ''
         );
         INSERT INTO public.owners VALUES (1);
         INSERT INTO public.things (name, owner, size) VALUES ('a', 1, 1);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let run = |sql: &'static str| {
        let pool = pool.clone();
        async move { Error::from(sqlx::query(sql).execute(&pool).await.unwrap_err()) }
    };

    let duplicate = run("INSERT INTO public.things (name, owner, size) VALUES ('a', 1, 1)").await;
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert!(duplicate.to_string().contains("things_name_key"));

    let dangling = run("INSERT INTO public.things (name, owner, size) VALUES ('b', 99, 1)").await;
    assert_eq!(dangling.code(), Code::NotFound);

    let referenced = run("DELETE FROM public.owners WHERE id = 1").await;
    assert_eq!(referenced.code(), Code::FailedPrecondition);

    let negative = run("INSERT INTO public.things (name, owner, size) VALUES ('c', 1, -1)").await;
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(negative.to_string().starts_with("things_size_positive:"));

    let missing =
        run("INSERT INTO public.things (name, owner, size, label) VALUES ('d', 1, 1, NULL)").await;
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.to_string().starts_with("label:"), "{missing}");

    let overflow =
        run("INSERT INTO public.things (name, owner, size) VALUES ('e', 1, 99999999999)").await;
    assert_eq!(overflow.code(), Code::InvalidArgument);

    // A connection terminated by an administrator is UNAVAILABLE, never INTERNAL.
    let mut conn = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .unwrap();
    let terminated = Error::from(
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .unwrap_err(),
    );
    assert_eq!(terminated.code(), Code::Unavailable, "{terminated:?}");
}
