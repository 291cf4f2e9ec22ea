//! Responses: JSON bodies and the Kubernetes `Status` objects of errors.

use super::*;

pub(super) fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed_unsync()
}

pub(super) fn json_response(code: StatusCode, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A `meta/v1` `Status` failure object.
pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

pub(super) fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<RespBody> {
    json_response(
        code,
        &status_object(code.as_u16(), reason, message, details),
    )
}

pub(super) fn bad_request(message: &str) -> Response<RespBody> {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

pub(super) fn not_found_path() -> Response<RespBody> {
    status_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

pub(super) fn method_not_allowed() -> Response<RespBody> {
    status_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

pub(super) fn invalid(field: &str, detail: &str) -> Response<RespBody> {
    status_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {detail}"),
        Some(
            json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": [
                {"reason": "FieldValueForbidden", "message": format!("Forbidden: {detail}"), "field": field}
            ]}),
        ),
    )
}

pub(super) fn expired_continue() -> Response<RespBody> {
    status_response(
        StatusCode::GONE,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the response to get a consistent result.",
        None,
    )
}
