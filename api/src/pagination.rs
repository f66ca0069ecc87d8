//! Pages of lists: `?page=1&size=20` (size ≤ 100) in, `{items, total, page,
//! size, pages}` out.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, FieldError};

pub const MAX_SIZE: u32 = 100;
/// The last page one may ask for: the document's `int32` bound (and an
/// offset that `i64` holds with room to spare).
pub const MAX_PAGE: u32 = 2_147_483_647;

#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number.
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    pub page: Option<u32>,
    /// Items per page, at most 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub size: Option<u32>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub size: u32,
}

impl PageRequest {
    /// # Errors
    /// `page` outside 1..=[`MAX_PAGE`] or `size` outside 1..=100.
    pub fn parse(query: PageQuery) -> Result<Self, ApiError> {
        let (page, size) = (query.page.unwrap_or(1), query.size.unwrap_or(20));
        let mut errors = Vec::new();
        if !(1..=MAX_PAGE).contains(&page) {
            errors.push(FieldError {
                field: "page".into(),
                message: format!("must be 1 to {MAX_PAGE}"),
            });
        }
        if !(1..=MAX_SIZE).contains(&size) {
            errors.push(FieldError {
                field: "size".into(),
                message: format!("must be 1 to {MAX_SIZE}"),
            });
        }
        if errors.is_empty() {
            Ok(Self { page, size })
        } else {
            Err(ApiError::validation(errors))
        }
    }

    pub fn limit(self) -> i64 {
        i64::from(self.size)
    }

    pub fn offset(self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.size)
    }
}

/// One page of `T`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub page: u32,
    pub size: u32,
    pub pages: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, total: i64, request: PageRequest) -> Self {
        let size = i64::from(request.size);
        Self {
            items,
            total,
            page: request.page,
            size: request.size,
            pages: (total + size - 1) / size,
        }
    }
}
