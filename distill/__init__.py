"""FusionLog distill package: LLM pseudo-labels for proprietary sessions.

backends/ (transformers CPU default, vllm offline, OpenAI-compatible HTTP) behind one interface;
prompts.py loads and validates prompts/*.yaml; render.py makes untrusted log text safe to embed;
verdicts.py parses answers; cache.py is the SQLite answer cache; labeller.py ties them together with
a budget; retrieval.py is the fallback few-shot retriever; lora.py / calibration.py teach and
calibrate the small LLM on labelled source sessions; jobs.py backs `fusionlog label` / `llm-tune`.
Nothing heavy is imported here.
"""

from distill.config import BackendConfig, LabelConfig, TuneConfig

__all__ = ["BackendConfig", "LabelConfig", "TuneConfig"]
