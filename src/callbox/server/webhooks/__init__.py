"""status_url webhooks: signed (`signing`), ordered, retried and queued on disk (`queue`).

See `callbox.server.webhooks.signing` for the signature scheme receivers implement, and
`callbox.server.webhooks.queue` for the delivery guarantees.
"""

from callbox.server.webhooks.queue import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    USER_AGENT,
    Delivery,
    WebhookQueue,
    backoff_delay,
)
from callbox.server.webhooks.signing import SIGNATURE_HEADER, sign, verify

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "Delivery",
    "WebhookQueue",
    "backoff_delay",
    "sign",
    "verify",
]
