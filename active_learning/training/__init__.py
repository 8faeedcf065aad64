"""Training rounds: the dataset and its fixed split (``dataset``), one round from data to promotion
(``rounds``), the registry of versions (``registry``), each round's report (``round_report``) and the worker
that schedules and runs rounds (``worker``)."""
