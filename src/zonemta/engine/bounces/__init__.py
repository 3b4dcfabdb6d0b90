"""After a delivery ends: bounce classification, DSNs, notices, webhooks and the suppression
list."""
