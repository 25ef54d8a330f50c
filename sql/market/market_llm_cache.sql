-- market_llm_cache: the language model's scores of market prompts, kept across runs (assets/market/llm.py).
-- engine_key: model_key of the backend, model, adapter weights and dtype; kind: 'utility' (log P(Yes) -
-- log P(No) of an option prompt) or 'qty' (the mean of the quantity answer); prompt_key: the 128-bit blake2b
-- digest of the prompt text. Appended, never rewritten: a key's value cannot change for the same model.
create table if not exists market_llm_cache (
    engine_key varchar,
    kind varchar,
    prompt_key blob,
    value double,
    created_at timestamp default current_timestamp
)
