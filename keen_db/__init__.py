"""keen-db operations: the embedded cluster, migrations, seeds, doctor, backup, bench, demo."""
