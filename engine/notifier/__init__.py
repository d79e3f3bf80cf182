"""The built-in notifier plugin: lifecycle and payout-failure notices to the operator.

Enable it with ``plugins.enabled = [..., "notifier"]`` and configure channels in
``[plugins.notifier]`` (``NotifierConfig``). Modules:

- ``hooks``: the hookimpls (entry point ``notifier = "engine.notifier.hooks"``);
- ``config``: the settings struct;
- ``messages``: plain-language wording, reusable by the rest of the engine
  (``payout_failure_reason(code) -> (reason, what_to_do)``);
- ``outbox`` and ``tables``: the ``notifier_outbox`` table and non-blocking enqueue;
- ``delivery``: ``deliver_due`` and ``run_delivery_loop`` (claims, retries, leases);
- ``senders``: the wire format (signed webhook POSTs, SMTP email);
- ``cli``: ``marketplace notifier status|retry-dead``.
"""
