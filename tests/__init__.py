import pytest

# A helper module whose asserts should explain their failures as a test's do
# (pytest rewrites the asserts of test modules and conftest only).
pytest.register_assert_rewrite("tests.daemonrig")
