//! What an avatar does: replacing a user's avatar with an image stored as a
//! file of purpose `avatar` (or removing it), releasing the one a profile
//! change leaves behind, and forgetting one whose file is deleted. The
//! users, avatar and files routes call these.

use keel_shared::{
    Config,
    db::{
        files::{self, File, NewFile, Purpose},
        users::{self, ProfileChanges, User},
    },
    storage::Storage,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

/// Where avatars are served; `avatar_url` is this under `APP_BASE_URL`.
const AVATARS_PATH: &str = "/api/v1/avatars";

/// Makes `image` (recorded here) the avatar of `owner`, or removes theirs
/// (`None`); deletes the file of the avatar it replaces if `owner` uploaded
/// it. The caller deletes `image`'s object if this fails.
///
/// # Errors
/// The user is gone, the quota is exceeded, or the database fails.
pub async fn replace(
    state: &AppState,
    owner: Uuid,
    image: Option<&NewFile>,
) -> Result<User, ApiError> {
    let gone = || ApiError::not_found("no such user");
    let mut tx = state.db.begin().await?;
    let before = lock_user(&mut tx, owner).await?.ok_or_else(gone)?;
    // The old avatar goes first, so its bytes do not count against the
    // quota the new one is held to.
    let replaced = release(&mut tx, owner, before.avatar_url.as_deref()).await?;
    let url = match image {
        Some(image) => {
            let quota = state.config.storage.user_storage_quota_bytes;
            files::insert_within_quota(&mut tx, owner, std::slice::from_ref(image), quota).await?;
            Some(avatar_url(&state.config, image.id))
        }
        None => None,
    };
    let changes = ProfileChanges {
        avatar_url: Some(url),
        ..ProfileChanges::default()
    };
    let user = users::update_profile(&mut *tx, owner, &changes)
        .await?
        .ok_or_else(gone)?;
    tx.commit().await?;
    state.users.invalidate(owner).await;
    delete_released(&state.storage, replaced).await;
    Ok(user)
}

/// Applies `changes` to user `id` within `tx`: every profile change that
/// may set `avatar_url` (`PATCH /users/me`, `PATCH /users/{id}`) goes
/// through here, so an avatar Keel stored for them that the change leaves
/// behind does not linger, private but counted in their quota. Its row is
/// deleted here and returned; once `tx` commits, [`delete_released`]
/// deletes its object.
///
/// # Errors
/// The database fails.
pub async fn update_profile(
    tx: &mut PgConnection,
    id: Uuid,
    changes: &ProfileChanges,
) -> Result<Option<(User, Option<File>)>, sqlx::Error> {
    let Some(new_url) = &changes.avatar_url else {
        let user = users::update_profile(&mut *tx, id, changes).await?;
        return Ok(user.map(|user| (user, None)));
    };
    let Some(before) = lock_user(tx, id).await? else {
        return Ok(None);
    };
    let released = if avatar_id(before.avatar_url.as_deref()) == avatar_id(new_url.as_deref()) {
        None
    } else {
        release(tx, id, before.avatar_url.as_deref()).await?
    };
    let user = users::update_profile(&mut *tx, id, changes).await?;
    Ok(user.map(|user| (user, released)))
}

/// Clears the `avatar_url` of `owner` if it names file `file_id`, which
/// `DELETE /files/{id}` is deleting in `tx`, so it never points at nothing.
/// The caller has locked the user with [`lock_user`] before deleting the
/// file, in the order [`replace`] takes them, so neither waits on the other.
///
/// # Errors
/// The database fails.
pub async fn forget(tx: &mut PgConnection, owner: &User, file_id: Uuid) -> Result<(), sqlx::Error> {
    if avatar_id(owner.avatar_url.as_deref()) == Some(file_id) {
        let changes = ProfileChanges {
            avatar_url: Some(None),
            ..ProfileChanges::default()
        };
        users::update_profile(&mut *tx, owner.id, &changes).await?;
    }
    Ok(())
}

/// Locks user `id` until `tx` ends (an update of nothing but `updated_at`),
/// so of two concurrent avatar changes the second sees what the first set
/// and deletes it, rather than both replacing the same one.
///
/// # Errors
/// The database fails.
pub async fn lock_user(tx: &mut PgConnection, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    users::update_profile(&mut *tx, id, &ProfileChanges::default()).await
}

/// Deletes the row of the avatar file `url` names, if it is one `owner`
/// uploaded; the deleted row. The old URL may name a file that is not this
/// user's avatar (PATCH /users/me takes any URL): only their own goes.
async fn release(
    tx: &mut PgConnection,
    owner: Uuid,
    url: Option<&str>,
) -> Result<Option<File>, sqlx::Error> {
    let Some(id) = avatar_id(url) else {
        return Ok(None);
    };
    match files::find(&mut *tx, id).await? {
        Some(f) if f.purpose == Purpose::Avatar && f.owner_id == owner => {
            files::delete(&mut *tx, id).await
        }
        _ => Ok(None),
    }
}

/// Deletes the object of an avatar whose row [`release`] deleted and whose
/// transaction committed.
pub async fn delete_released(storage: &Storage, released: Option<File>) {
    if let Some(old) = released
        && let Err(e) = storage.delete(&old.object_key).await
    {
        tracing::warn!(error = %e, file_id = %old.id, "could not delete a replaced avatar's object; the sweep will");
    }
}

/// `{APP_BASE_URL}/api/v1/avatars/{id}`.
fn avatar_url(config: &Config, id: Uuid) -> String {
    format!(
        "{}{AVATARS_PATH}/{id}",
        config.http.app_base_url.trim_end_matches('/')
    )
}

/// The file an avatar URL of Keel's names. By the path alone, so URLs made
/// under an earlier `APP_BASE_URL` are still known; whose file it is, the
/// caller checks.
pub fn avatar_id(url: Option<&str>) -> Option<Uuid> {
    let url = url::Url::parse(url?).ok()?;
    let id = url
        .path()
        .trim_end_matches('/')
        .strip_prefix(AVATARS_PATH)?
        .strip_prefix('/')?;
    Uuid::parse_str(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_avatar_paths_name_avatars() {
        let id = Uuid::now_v7();
        for url in [
            format!("https://keel.example.com/api/v1/avatars/{id}"),
            format!("http://localhost:8000/api/v1/avatars/{id}/"),
        ] {
            assert_eq!(avatar_id(Some(&url)), Some(id), "{url}");
        }
        for url in [
            format!("https://cdn.example.com/{id}.png"),
            format!("https://keel.example.com/api/v1/files/{id}"),
            format!("https://keel.example.com/api/v1/avatars/{id}/x"),
            "https://keel.example.com/api/v1/avatars/".to_owned(),
            "not a url".to_owned(),
        ] {
            assert_eq!(avatar_id(Some(&url)), None, "{url}");
        }
        assert_eq!(avatar_id(None), None);
    }
}
