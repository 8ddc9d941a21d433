"""Programs that run beside the web workers."""
