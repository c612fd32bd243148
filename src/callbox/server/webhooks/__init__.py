"""status_url webhooks: signed (`signing`), ordered, retried and queued on disk (`queue`) or in
the cluster's PostgreSQL database (`postgres_db`).

See `callbox.server.webhooks.signing` for the signature scheme receivers implement, and
`callbox.server.webhooks.queue` for the delivery guarantees.
"""

from callbox.server.webhooks.postgres_db import PostgresQueueDb
from callbox.server.webhooks.queue import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    USER_AGENT,
    WebhookQueue,
    backoff_delay,
)
from callbox.server.webhooks.queue_db import Delivery, QueueDb
from callbox.server.webhooks.signing import SIGNATURE_HEADER, sign, verify
from callbox.server.webhooks.sqlite_db import SqliteQueueDb

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "Delivery",
    "PostgresQueueDb",
    "QueueDb",
    "SqliteQueueDb",
    "WebhookQueue",
    "backoff_delay",
    "sign",
    "verify",
]
