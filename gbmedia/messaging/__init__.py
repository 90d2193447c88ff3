"""Chat: conversations, persistence, delivery, receipts, search and the event stream."""
