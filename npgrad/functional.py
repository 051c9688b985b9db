"""The user-facing functions (``from npgrad import functional as F``)."""
