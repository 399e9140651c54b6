"""Session fixtures: the real servers are started once per test session."""
pytest_plugins = [
    "infinity_assets_tests.servers.infinity_fixtures",
    "infinity_assets_tests.servers.seaweedfs_fixtures",
]
