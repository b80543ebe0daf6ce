from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw import errors


def test_every_gateway_error_keeps_its_status_and_message() -> None:
    cases = {
        errors.InvalidArgument("subject", "must not be empty"): Status.INVALID_ARGUMENT,
        errors.NotFound("stream x: not found"): Status.NOT_FOUND,
        errors.AlreadyExists("x"): Status.ALREADY_EXISTS,
        errors.PermissionDenied("x"): Status.PERMISSION_DENIED,
        errors.Unauthenticated("x"): Status.UNAUTHENTICATED,
        errors.ResourceExhausted("x"): Status.RESOURCE_EXHAUSTED,
        errors.Unavailable("x"): Status.UNAVAILABLE,
        errors.DeadlineExceeded("x"): Status.DEADLINE_EXCEEDED,
        errors.FailedPrecondition("x"): Status.FAILED_PRECONDITION,
    }
    for exc, status in cases.items():
        grpc_error = errors.to_grpc_error(exc)
        assert grpc_error.status is status
        assert grpc_error.message == exc.message


def test_invalid_argument_names_the_field() -> None:
    assert errors.to_grpc_error(errors.InvalidArgument("subject", "bad")).message == "subject: bad"


def test_unknown_exceptions_become_internal_without_leaking_details() -> None:
    err = errors.to_grpc_error(KeyError("secret-internal-name"))
    assert err.status is Status.INTERNAL and "secret" not in (err.message or "")
    assert errors.to_grpc_error(TimeoutError()).status is Status.DEADLINE_EXCEEDED
    original = GRPCError(Status.ABORTED, "as is")
    assert errors.to_grpc_error(original) is original
