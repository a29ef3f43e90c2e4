//! Routers that remember the path templates they serve. Each service builds its router through
//! [`Listed`] and exposes `route_paths()`, so the role table (`tests/policy.rs`) can check that
//! every route has an entry: a new route without one fails that test.

use axum::routing::MethodRouter;
use axum::Router;

/// An axum [`Router`] and the path templates (`/v2.1/servers/{id}`) of its routes.
pub struct Listed<S> {
    router: Router<S>,
    paths: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Default for Listed<S> {
    fn default() -> Self {
        Listed {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Listed<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.paths.push(path.to_string());
        self.router = self.router.route(path, method_router);
        self
    }

    /// Serves `inner` under `prefix` (its `/` is `prefix` itself, as axum nests it).
    pub fn nest(mut self, prefix: &str, inner: Listed<S>) -> Self {
        self.paths.extend(inner.paths.iter().map(|p| {
            if p == "/" {
                prefix.to_string()
            } else {
                format!("{prefix}{p}")
            }
        }));
        self.router = self.router.nest(prefix, inner.router);
        self
    }

    pub fn merge(mut self, other: Listed<S>) -> Self {
        self.paths.extend(other.paths);
        self.router = self.router.merge(other.router);
        self
    }

    /// Changes the router (a layer over the routes so far); the paths stay.
    pub fn map(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.clone()
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn nested_and_merged_paths_are_listed_as_axum_serves_them() {
        let inner = Listed::<()>::new()
            .route("/", get(|| async {}))
            .route("/a/{id}", get(|| async {}));
        let l = Listed::<()>::new()
            .route("/", get(|| async {}))
            .nest("/v1/{project_id}", inner)
            .merge(Listed::new().route("/b", get(|| async {})));
        assert_eq!(
            l.paths(),
            ["/", "/v1/{project_id}", "/v1/{project_id}/a/{id}", "/b"]
        );
    }
}
