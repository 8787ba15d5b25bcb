//! The behaviour every [`Store`] must show, written once against `&dyn Store`. Each backend's
//! tests call these functions on a fresh, empty store.

use super::{Member, Space, Store, StoreError};
use crate::access::Role;

pub fn space(id: &str, org: &str) -> Space {
    Space {
        id: id.into(),
        org: org.into(),
        name: format!("{id} room"),
        created_ms: 1_700_000_000_000,
    }
}

pub fn member(space: &str, user: &str, org: &str, role: Role) -> Member {
    Member {
        space: space.into(),
        user: user.into(),
        org: org.into(),
        role,
    }
}

pub async fn spaces_and_members(store: &dyn Store) {
    assert_eq!(store.space("s1").await.unwrap(), None);
    assert!(store.spaces_of("alice").await.unwrap().is_empty());

    // Created out of order to check the listing order.
    store
        .create_space(space("s2", "acme"), "alice")
        .await
        .unwrap();
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    store
        .create_space(space("s3", "globex"), "bob")
        .await
        .unwrap();

    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    // The creator owns the space, as a member of the space's organisation.
    assert_eq!(
        store.member("s1", "alice").await.unwrap(),
        Some(member("s1", "alice", "acme", Role::Owner))
    );

    store
        .put_member(member("s1", "carol", "acme", Role::Member))
        .await
        .unwrap();
    store
        .put_member(member("s1", "bob", "globex", Role::Guest))
        .await
        .unwrap();
    let ids = |spaces: Vec<Space>| spaces.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.spaces_of("alice").await.unwrap()), ["s1", "s2"]);
    assert_eq!(ids(store.spaces_of("bob").await.unwrap()), ["s1", "s3"]);
    assert!(store.spaces_of("nobody").await.unwrap().is_empty());
    assert_eq!(
        store.members("s1").await.unwrap(),
        [
            member("s1", "alice", "acme", Role::Owner),
            member("s1", "bob", "globex", Role::Guest),
            member("s1", "carol", "acme", Role::Member),
        ]
    );

    // put_member on an existing membership updates it in place.
    store
        .put_member(member("s1", "carol", "acme", Role::Owner))
        .await
        .unwrap();
    assert_eq!(
        store.member("s1", "carol").await.unwrap(),
        Some(member("s1", "carol", "acme", Role::Owner))
    );
    assert_eq!(store.members("s1").await.unwrap().len(), 3);
    assert!(store.members("missing").await.unwrap().is_empty());
}

pub async fn duplicate_space_rejected(store: &dyn Store) {
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    let again = store.create_space(space("s1", "globex"), "bob").await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    // The failed create changed nothing: neither the space nor its would-be owner.
    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    assert_eq!(store.member("s1", "bob").await.unwrap(), None);
    assert!(store.spaces_of("bob").await.unwrap().is_empty());
}

pub async fn member_of_missing_space(store: &dyn Store) {
    let put = store
        .put_member(member("nope", "alice", "acme", Role::Member))
        .await;
    assert!(matches!(put, Err(StoreError::NotFound(_))), "{put:?}");
    assert_eq!(store.member("nope", "alice").await.unwrap(), None);
    assert!(store.spaces_of("alice").await.unwrap().is_empty());
}

pub async fn remove_member(store: &dyn Store) {
    store
        .create_space(space("s1", "acme"), "alice")
        .await
        .unwrap();
    store
        .put_member(member("s1", "bob", "globex", Role::Guest))
        .await
        .unwrap();
    assert!(store.remove_member("s1", "bob").await.unwrap());
    assert!(!store.remove_member("s1", "bob").await.unwrap());
    assert!(!store.remove_member("missing", "bob").await.unwrap());
    assert_eq!(store.member("s1", "bob").await.unwrap(), None);
    assert!(store.spaces_of("bob").await.unwrap().is_empty());
    assert_eq!(
        store.members("s1").await.unwrap(),
        [member("s1", "alice", "acme", Role::Owner)]
    );
}

/// `open` must return a new handle on the same durable state each time it is called.
pub async fn survives_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    {
        let store = open();
        store
            .create_space(space("s1", "acme"), "alice")
            .await
            .unwrap();
        store
            .put_member(member("s1", "bob", "globex", Role::Guest))
            .await
            .unwrap();
        store
            .put_member(member("s1", "carol", "acme", Role::Member))
            .await
            .unwrap();
        assert!(store.remove_member("s1", "carol").await.unwrap());
    }
    let store = open();
    assert_eq!(store.space("s1").await.unwrap(), Some(space("s1", "acme")));
    assert_eq!(
        store.members("s1").await.unwrap(),
        [
            member("s1", "alice", "acme", Role::Owner),
            member("s1", "bob", "globex", Role::Guest)
        ]
    );
}
