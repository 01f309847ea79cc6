"""The latent store: Parquet shards of encoded samples, partitioned by aspect-ratio bucket, committed atomically.

Producers write it (``writer``), consumers read it (``reader``); ``columns`` fixes the contract and ``buckets``
the aspect-ratio buckets and per-resolution sizes. See docs/design.md §4 Latent store contract.
"""
