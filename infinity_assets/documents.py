"""Documents in object storage at their documented import path; they live in :mod:`infinity_assets.storage.documents`."""
from infinity_assets.storage.documents import *  # noqa: F401,F403
from infinity_assets.storage.documents import __all__  # noqa: F401
