"""The built-in notifier plugin: lifecycle and payout-failure notices to the operator."""
