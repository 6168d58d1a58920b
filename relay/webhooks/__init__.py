"""The public listener: provider events in, and one-click unsubscribe (``[webhooks] listen``).

Apart from the admin listener, which stays private: this one faces the
internet, so it serves only what a provider or a recipient needs, each route
authenticated by its own means (the provider's signature or basic auth; an
unguessable token in the path; an HMAC token for unsubscribe).
"""
