"""The public listener: provider webhooks and one-click unsubscribe."""
