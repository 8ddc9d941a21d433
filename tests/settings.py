"""Settings the test servers share with the tests that check them."""

SECRET_KEY = "test-secret-key"  # base_env's: every test server signs with it
