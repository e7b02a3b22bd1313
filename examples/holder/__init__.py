"""Reference data holder: serves real-format Enedis v5 files through the holder export contract."""
