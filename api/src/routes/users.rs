//! `/api/v1/users`: profiles, the admin list, roles, deletion, and the seed
//! aliases (`/users/get/{id}`, `/users/update/{id}`, `/users/update/{id}/role`,
//! `/users/delete/{id}`). A non-admin asking for another user's object gets
//! 404, as if it did not exist.

use axum::{
    extract::State,
    http::{Method, StatusCode},
    response::IntoResponse,
};
use keel_shared::{
    db::{
        refresh_tokens,
        users::{self, User, UserFilter},
    },
    domain::Role,
};
use serde::{Deserialize, Deserializer};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    accounts::{
        ProfileInput, change_role, delete_account, ensure_not_last_superadmin, ensure_outranks,
        no_such_user,
    },
    aliases::Alias,
    auth::Principal,
    avatars,
    error::{ApiError, FieldError},
    extract::{AppJson, AppPath, AppQuery},
    openapi::{
        AdminObject, AdminOnly, AvatarUrl, Bio, JsonBodyErrors, LanguageTag, OwnObject, PersonName,
        PhoneNumber, SignedIn, ValidationFailed,
    },
    pagination::{Page, PageQuery, PageRequest},
    problems::problem_response,
    responses::UserResponse,
    state::AppState,
};

/// The seed's paths for the operations on one user.
pub const ALIASES: [Alias; 4] = [
    Alias {
        method: Method::GET,
        path: "/api/v1/users/get/{id}",
        of: (Method::GET, "/api/v1/users/{id}"),
    },
    Alias {
        method: Method::PUT,
        path: "/api/v1/users/update/{id}",
        of: (Method::PATCH, "/api/v1/users/{id}"),
    },
    Alias {
        method: Method::PUT,
        path: "/api/v1/users/update/{id}/role",
        of: (Method::PUT, "/api/v1/users/{id}/role"),
    },
    Alias {
        method: Method::DELETE,
        path: "/api/v1/users/delete/{id}",
        of: (Method::DELETE, "/api/v1/users/{id}"),
    },
];

pub fn router() -> OpenApiRouter<AppState> {
    let [get, update, role, delete] = ALIASES;
    OpenApiRouter::new()
        .routes(routes!(get_me, patch_me))
        .routes(routes!(list_users))
        .routes(routes!(get_user, patch_user, delete_user))
        .routes(routes!(set_role))
        .routes(routes!(users_by_role))
        .route(get.path, get.to(get_user))
        .route(update.path, update.to(patch_user))
        .route(role.path, role.to(set_role))
        .route(delete.path, delete.to(delete_user))
}

/// Declares a patch of the profile fields, each absent to keep it and
/// `null` to clear it, and `$extra` fields after them; any other field is
/// refused with 422. (serde's `flatten` would share the fields too, but it
/// turns `deny_unknown_fields` off.)
macro_rules! profile_patch {
    ($(#[$meta:meta])* $name:ident { $($(#[$extra_meta:meta])* $extra:ident: $extra_type:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        #[schema(example = json!({"first_name": "Alice", "bio": "Writes the nightly reports.", "timezone": "Europe/Berlin"}))]
        pub struct $name {
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<PersonName>)]
            pub first_name: Option<Option<String>>,
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<PersonName>)]
            pub last_name: Option<Option<String>>,
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<PhoneNumber>)]
            pub phone_number: Option<Option<String>>,
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<AvatarUrl>)]
            pub avatar_url: Option<Option<String>>,
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<Bio>)]
            pub bio: Option<Option<String>>,
            /// `null` sets it back to `UTC`.
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<crate::openapi::Timezone>)]
            pub timezone: Option<Option<String>>,
            /// `null` sets it back to `en`.
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<LanguageTag>)]
            pub language: Option<Option<String>>,
            $($(#[$extra_meta])* pub $extra: $extra_type,)*
        }

        impl $name {
            /// The profile fields, as the accounts layer takes them.
            fn profile(self) -> ProfileInput {
                ProfileInput {
                    first_name: self.first_name,
                    last_name: self.last_name,
                    phone_number: self.phone_number,
                    avatar_url: self.avatar_url,
                    bio: self.bio,
                    timezone: self.timezone,
                    language: self.language,
                }
            }
        }
    };
}

profile_patch!(
    /// Your own profile fields to change; absent fields stay, `null` clears.
    /// Any other field (`role`, `email_verified`, `is_active`, …) is refused
    /// with 422.
    ProfilePatch {}
);

profile_patch!(
    /// A user's profile fields to change, as [`ProfilePatch`], and (admins,
    /// on someone else) `is_active`. Any other field (`role`,
    /// `email_verified`, …) is refused with 422.
    UserPatch {
        /// Admins only, on someone else's account: `false` on your own is 403.
        is_active: Option<bool>,
    }
);

/// Tells a present `null` (`Some(None)`) from an absent field (`None`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl UserPatch {
    fn split(self) -> (ProfileInput, Option<bool>) {
        let is_active = self.is_active;
        (self.profile(), is_active)
    }
}

/// The current user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = []), ("api_key" = [])),
    responses(
        SignedIn,
        (status = 200, description = "The caller", body = UserResponse),
    ))]
async fn get_me(principal: Principal) -> AppJson<UserResponse> {
    AppJson(principal.user.into())
}

/// Changes the current user's profile fields.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = []), ("api_key" = [])),
    request_body = ProfilePatch,
    responses(
        JsonBodyErrors, SignedIn,
        (status = 200, description = "The caller, changed", body = UserResponse),
    ))]
async fn patch_me(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(patch): AppJson<ProfilePatch>,
) -> Result<AppJson<UserResponse>, ApiError> {
    let mut errors = Vec::new();
    let changes = patch.profile().parse(&mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut tx = state.db.begin().await?;
    let (user, released) = avatars::update_profile(&mut tx, principal.id(), &changes)
        .await?
        .ok_or_else(no_such_user)?;
    tx.commit().await?;
    state.users.invalidate(user.id).await;
    avatars::delete_released(&state.storage, released).await;
    Ok(AppJson(user.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UserListQuery {
    /// Only this role.
    role: Option<Role>,
    /// Matches username, email, first or last name.
    #[param(max_length = 100)]
    q: Option<String>,
    is_active: Option<bool>,
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 20)]
    size: Option<u32>,
}

/// Every user, newest first (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(UserListQuery),
    responses(
        AdminOnly,
        (status = 200, description = "A page of users", body = Page<UserResponse>,
            example = json!({"items": [UserResponse::example()], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
async fn list_users(
    State(db): State<PgPool>,
    principal: Principal,
    AppQuery(query): AppQuery<UserListQuery>,
) -> Result<AppJson<Page<UserResponse>>, ApiError> {
    principal.require(Role::Admin)?;
    let page = PageRequest::parse(PageQuery {
        page: query.page,
        size: query.size,
    })?;
    if query.q.as_ref().is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::validation(vec![FieldError {
            field: "q".into(),
            message: "must be at most 100 characters".into(),
        }]));
    }
    let filter = UserFilter {
        role: query.role,
        is_active: query.is_active,
        q: query.q,
    };
    list_page(&db, &filter, page).await
}

async fn list_page(
    db: &PgPool,
    filter: &UserFilter,
    page: PageRequest,
) -> Result<AppJson<Page<UserResponse>>, ApiError> {
    let (users, total) = users::list(db, filter, page.limit(), page.offset()).await?;
    Ok(AppJson(Page::new(
        users.into_iter().map(UserResponse::from).collect(),
        total,
        page,
    )))
}

/// Users of one role (admin).
#[utoipa::path(get, path = "/api/v1/users/role/{role}", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(("role" = Role, Path, description = "`user`, `admin` or `superadmin`; any other is 404"), PageQuery),
    responses(
        AdminObject,
        (status = 200, description = "A page of the role's users", body = Page<UserResponse>,
            example = json!({"items": [UserResponse::example()], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
async fn users_by_role(
    State(db): State<PgPool>,
    principal: Principal,
    AppPath(role): AppPath<Role>,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<AppJson<Page<UserResponse>>, ApiError> {
    principal.require(Role::Admin)?;
    let filter = UserFilter {
        role: Some(role),
        ..UserFilter::default()
    };
    list_page(&db, &filter, PageRequest::parse(query)?).await
}

/// The user `id`, if the caller may see it: themself, or anyone for an admin.
async fn visible_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<User, ApiError> {
    if principal.id() == id {
        return Ok(principal.user.clone());
    }
    if !principal.is_admin() {
        return Err(no_such_user());
    }
    users::find_by_id(&state.db, id)
        .await?
        .ok_or_else(no_such_user)
}

/// One user: yourself, or anyone for an admin.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        OwnObject,
        (status = 200, description = "The user", body = UserResponse),
    ))]
async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<UserResponse>, ApiError> {
    visible_user(&state, &principal, id)
        .await
        .map(|u| AppJson(u.into()))
}

/// Changes a user's profile: yourself, or (admin) anyone below your role,
/// including `is_active`.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")), request_body = UserPatch,
    responses(
        JsonBodyErrors, AdminObject,
        (status = 200, description = "The user, changed", body = UserResponse),
        (status = 409, response = inline(LastSuperadmin)),
    ))]
async fn patch_user(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
    AppJson(patch): AppJson<UserPatch>,
) -> Result<AppJson<UserResponse>, ApiError> {
    let target = visible_user(&state, &principal, id).await?;
    let (input, is_active) = patch.split();
    if is_active.is_some() && !principal.is_admin() {
        return Err(ApiError::forbidden("only admins may set is_active"));
    }
    // An admin who deactivated themselves would be locked out at once, with
    // no session left to undo it: `is_active` is set on someone else.
    if is_active == Some(false) && target.id == principal.id() {
        return Err(ApiError::forbidden(
            "you cannot deactivate your own account; another admin can",
        ));
    }
    ensure_outranks(&principal, &target)?;
    let mut errors = Vec::new();
    let mut changes = input.parse(&mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    changes.is_active = is_active;
    let mut tx = state.db.begin().await?;
    if is_active == Some(false) {
        ensure_not_last_superadmin(&mut tx, &target).await?;
    }
    let (user, released) = avatars::update_profile(&mut tx, id, &changes)
        .await?
        .ok_or_else(no_such_user)?;
    if is_active == Some(false) {
        refresh_tokens::revoke_all_for_user(&mut *tx, id).await?;
    }
    tx.commit().await?;
    state.users.invalidate(id).await;
    avatars::delete_released(&state.storage, released).await;
    Ok(AppJson(user.into()))
}

problem_response!(
    /// 409 `last_superadmin`: the only active superadmin cannot be demoted,
    /// deactivated or deleted.
    pub LastSuperadmin = [LastSuperadmin]
);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "admin"}))]
pub struct RoleChange {
    pub role: Role,
}

/// Sets a user's role (superadmin). Ends the user's sessions.
#[utoipa::path(put, path = "/api/v1/users/{id}/role", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")), request_body = RoleChange,
    responses(
        JsonBodyErrors, AdminObject,
        (status = 200, description = "The user in their new role; their sessions have ended", body = UserResponse),
        (status = 409, response = inline(LastSuperadmin)),
    ))]
async fn set_role(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
    AppJson(change): AppJson<RoleChange>,
) -> Result<AppJson<UserResponse>, ApiError> {
    principal.require(Role::Superadmin)?;
    // Superadmin is the top role, so nobody here can raise their own.
    if principal.id() == id && change.role > principal.role() {
        return Err(ApiError::forbidden("nobody can raise their own role"));
    }
    change_role(&state.db, &state.users, id, change.role)
        .await
        .map(|u| AppJson(u.into()))
}

/// Deletes a user (admin), never one of a higher role nor the last superadmin.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        AdminObject,
        (status = 204, description = "Deleted; the address is told by email"),
        (status = 409, response = inline(LastSuperadmin)),
    ))]
async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Role::Admin)?;
    delete_account(&state.db, &state.jobs, &state.users, Some(&principal), id).await?;
    Ok(StatusCode::NO_CONTENT)
}
