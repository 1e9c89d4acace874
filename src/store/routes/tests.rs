//! Unit tests of the store's route table.

use super::*;

fn ok(method: Method, path: &str) -> Route {
    resolve(&method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn every_operation_resolves() {
    let svc = || "7".to_owned();
    let cases = [
        (Method::POST, "/services/start", Route::StartService),
        (
            Method::GET,
            "/services/anonymous/408-832-7799",
            Route::QueryServices {
                owner: OwnerSegment::Anonymous("408-832-7799".into()),
                lifecycle: Lifecycle::All,
            },
        ),
        (
            Method::GET,
            "/services/anonymous/k/active/",
            Route::QueryServices {
                owner: OwnerSegment::Anonymous("k".into()),
                lifecycle: Lifecycle::Active,
            },
        ),
        (
            Method::GET,
            "/customers/c/services/completed",
            Route::QueryServices {
                owner: OwnerSegment::Customer("c".into()),
                lifecycle: Lifecycle::Completed,
            },
        ),
        (
            Method::GET,
            "/customers/c/services",
            Route::QueryServices {
                owner: OwnerSegment::Customer("c".into()),
                lifecycle: Lifecycle::All,
            },
        ),
        (
            Method::POST,
            "/customers/c/services/7",
            Route::Associate {
                customer_id: "c".into(),
                service: svc(),
            },
        ),
        (
            Method::POST,
            "/services/7/end",
            Route::CompleteService { service: svc() },
        ),
        (
            Method::GET,
            "/services/7",
            Route::GetService { service: svc() },
        ),
        (
            Method::PUT,
            "/services/7",
            Route::UpdateService { service: svc() },
        ),
        (
            Method::DELETE,
            "/services/7",
            Route::DeleteService { service: svc() },
        ),
        (
            Method::PUT,
            "/services/7/extensions/x",
            Route::ServiceExtension {
                service: svc(),
                name: "x".into(),
                merge: false,
            },
        ),
        (
            Method::PUT,
            "/services/7/extensions/x/merge",
            Route::ServiceExtension {
                service: svc(),
                name: "x".into(),
                merge: true,
            },
        ),
        (
            Method::POST,
            "/services/7/states/start",
            Route::StartItem {
                service: svc(),
                kind: Kind::State,
            },
        ),
        (
            Method::POST,
            "/services/7/states/transition",
            Route::Transition { service: svc() },
        ),
        (
            Method::POST,
            "/services/7/states/3/end",
            Route::EndItem {
                service: svc(),
                kind: Kind::State,
                item: "3".into(),
            },
        ),
        (
            Method::GET,
            "/services/7/states",
            Route::ListItems {
                service: svc(),
                kind: Kind::State,
                lifecycle: Lifecycle::All,
            },
        ),
        (
            Method::GET,
            "/services/7/states/active",
            Route::ListItems {
                service: svc(),
                kind: Kind::State,
                lifecycle: Lifecycle::Active,
            },
        ),
        (
            Method::GET,
            "/services/7/states/3",
            Route::GetItem {
                service: svc(),
                kind: Kind::State,
                item: "3".into(),
            },
        ),
        (
            Method::PUT,
            "/services/7/states/3/extensions/x/merge",
            Route::ItemExtension {
                service: svc(),
                kind: Kind::State,
                item: "3".into(),
                name: "x".into(),
                merge: true,
            },
        ),
        (
            Method::POST,
            "/services/7/tasks/start",
            Route::StartItem {
                service: svc(),
                kind: Kind::Task,
            },
        ),
        (
            Method::POST,
            "/services/7/tasks/2/end",
            Route::EndItem {
                service: svc(),
                kind: Kind::Task,
                item: "2".into(),
            },
        ),
        (
            Method::GET,
            "/services/7/tasks/completed",
            Route::ListItems {
                service: svc(),
                kind: Kind::Task,
                lifecycle: Lifecycle::Completed,
            },
        ),
        (
            Method::GET,
            "/services/7/tasks/2",
            Route::GetItem {
                service: svc(),
                kind: Kind::Task,
                item: "2".into(),
            },
        ),
        (
            Method::PUT,
            "/services/7/tasks/2/extensions/x",
            Route::ItemExtension {
                service: svc(),
                kind: Kind::Task,
                item: "2".into(),
                name: "x".into(),
                merge: false,
            },
        ),
        (
            Method::GET,
            "/metadata/business-attributes",
            Route::BusinessAttributes { name: None },
        ),
        (
            Method::GET,
            "/metadata/business-attributes/media_type",
            Route::BusinessAttributes {
                name: Some("media_type".into()),
            },
        ),
        (Method::POST, "/maintenance/purge", Route::Purge),
    ];
    for (method, path, expected) in cases {
        assert_eq!(ok(method, &format!("{PREFIX}{path}")), expected, "{path}");
    }
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let cases = [
        (Method::GET, "/other", "404"),
        (Method::GET, "/genesys/1/cs", "404"),
        (Method::GET, "/genesys/1/cs/services", "404"),
        (Method::GET, "/genesys/1/cs//services/7", "404"),
        (Method::GET, "/genesys/1/cs/services/7/things", "404"),
        (
            Method::GET,
            "/genesys/1/cs/services/7/tasks/transition/x",
            "404",
        ),
        (Method::GET, "/genesys/1/cs/services/start", "405 POST"),
        (
            Method::POST,
            "/genesys/1/cs/services/7",
            "405 GET, PUT, DELETE",
        ),
        (
            Method::POST,
            "/genesys/1/cs/services/anonymous/k",
            "405 GET",
        ),
        (
            Method::GET,
            "/genesys/1/cs/customers/c/services/7",
            "405 POST",
        ),
        (
            Method::POST,
            "/genesys/1/cs/customers/c/services/active",
            "405 GET",
        ),
        (
            Method::GET,
            "/genesys/1/cs/services/7/states/start",
            "405 POST",
        ),
    ];
    for (method, path, expected) in cases {
        let got = match resolve(&method, path) {
            Err(ApiError::NoRoute(_)) => "404".to_owned(),
            Err(ApiError::MethodNotAllowed { allow, .. }) => format!("405 {allow}"),
            other => format!("{other:?}"),
        };
        assert_eq!(got, expected, "{method} {path}");
    }
}
