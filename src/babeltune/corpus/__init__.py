"""Reading corpora, shared by `advise` (measuring) and `train`/`eval` (training and scoring): files and folders
of .txt/.jsonl/.csv/.tsv/.parquet read safely (reader), every skip counted and reported (readlog), raw text
decoding (textread), structured records (records) and duplicate keys (duplicates)."""
