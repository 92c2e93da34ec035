"""Whether the job store works, for `GET /readyz` and the API's start-up.

A readiness probe that answers "ready" while every upload fails is worse than none, so /readyz
writes and removes a small object (JobStore.check) and names what is wrong: a missing bucket,
refused credentials, an unreachable endpoint. Load balancers ask often, so a passing check is
trusted for STORE_CHECK_SECONDS; a failing one is tried again on every probe, so a fix shows at once.
"""

import logging
import threading
import time

from contract.storage import JobStore, StorageError

STORE_CHECK_SECONDS = 30.0

log = logging.getLogger("service.readiness")


class StoreReadiness:
    def __init__(self, store: JobStore, trusted_for: float = STORE_CHECK_SECONDS):
        self.store = store
        self.trusted_for = trusted_for
        self.ok_until = 0.0
        self.lock = threading.Lock()  # one check at a time, however many probes arrive

    def check(self) -> None:
        """Nothing when the store was written lately or can be now; StorageError saying why not."""
        with self.lock:
            if time.monotonic() < self.ok_until:
                return
            self.store.check()
            self.ok_until = time.monotonic() + self.trusted_for


def prepare_store(store: JobStore, create: bool) -> None:
    """At start-up: create the bucket when asked (S3_CREATE_BUCKET), then log what is wrong, if anything."""
    try:
        if create and store.create():
            log.info("created the job store: %s", store)
        store.check()
    except StorageError as exc:
        log.error("the job store is not usable (%s): %s", exc.code, exc)
