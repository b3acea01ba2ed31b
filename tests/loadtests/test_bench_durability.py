from loadtests import bench_durability
from storeserver.settings import StoreSettings


def test_the_large_load_rewrite_threshold_is_one_the_store_accepts() -> None:
    # The store refuses to start on an out-of-range STORE_LOG_REWRITE_BYTES; the benchmark's
    # "never compact during the load" value must stay inside the setting's bounds.
    settings = StoreSettings(log_rewrite_bytes=bench_durability.HUGE_REWRITE)
    assert settings.log_rewrite_bytes >= 1 << 30
