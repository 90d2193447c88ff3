"""Chat's usage: one ``messages`` count per new message, billed to its conversation's instance and room."""

from __future__ import annotations

from gbmedia.messaging.messages import Messages
from gbmedia.messaging.models import Conversation
from gbmedia.tenancy.metering import Usage, UsageMeter


def meter_messages(messages: Messages, meter: UsageMeter) -> None:
    def sent(conversation: Conversation) -> None:
        meter.count(Usage(conversation.customer_id, conversation.instance_id, conversation.room_id), "messages")

    messages.on_sent(sent)
