"""schemathesis hooks for scripts/schemathesis.sh: berth's own contract checks."""

import json

import schemathesis


@schemathesis.check
def problem_json(ctx, response, case):
    """Every error answer is problem+json (RFC 9457) with a machine-readable `code`."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(
            f"{response.status_code} answered with content-type {content_type!r}"
        )
    try:
        body = json.loads(response.content)
    except ValueError as err:
        raise AssertionError(f"{response.status_code} body is not JSON: {err}") from err
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise AssertionError(f"{response.status_code} problem without a code: {body!r}")
    if body.get("status") != response.status_code:
        raise AssertionError(
            f"problem status {body.get('status')!r} differs from {response.status_code}"
        )
    return None


@schemathesis.check
def well_formed_bodies_are_read(ctx, response, case):
    """A schema-valid body is never refused for its form (a type, a shape, a bound the schema
    states): the 422s some operations may answer to schema-valid bodies (schemathesis.sh says
    which and why) come from rules that depend on the tenant or on several fields, never from
    reading the body."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        detail = json.loads(response.content).get("detail", "")
    except ValueError:
        return None
    if detail.startswith("invalid request body") or "JSON object" in detail:
        raise AssertionError(f"a schema-valid body was refused for its form: {detail}")
    return None
