"""A store error in a few words, for error messages and logs (app/storage/objects.py)."""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """A store error in a few words, without hosts' internals or credentials. s3fs turns S3's
    error codes into OSErrors with S3's message; the code stays on the chained ClientError."""
    text = f"{type(exc).__name__}: {exc}"
    chained = " ".join(repr(e) for e in _chain(exc))
    for needle, words in (
        ("NoSuchBucket", "the bucket does not exist"),
        ("InvalidAccessKeyId", "the access key is not known to the store (AWS_ACCESS_KEY_ID)"),
        ("Access Key Id you provided does not exist", "the access key is not known to the store (AWS_ACCESS_KEY_ID)"),
        ("SignatureDoesNotMatch", "the secret key does not match (AWS_SECRET_ACCESS_KEY)"),
        ("signature we calculated does not match", "the secret key does not match (AWS_SECRET_ACCESS_KEY)"),
        ("AccessDenied", "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
        ("Could not connect", "cannot connect to the endpoint (AWS_ENDPOINT_URL)"),
        ("Connect timeout", "the endpoint does not answer (AWS_ENDPOINT_URL)"),
    ):
        if needle in text or needle in chained:
            return words
    return text[:300]


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during (at most 8)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 8 and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out
