"""accounting: the usage ledger's rows, the counters that mirror them, the usage report."""
