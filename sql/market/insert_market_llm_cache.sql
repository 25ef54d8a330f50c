-- Append the staged new scores (`staged_market_llm_cache`, assets/market/llm.py LLMChoiceEngine.save) that
-- the cache does not hold yet.
insert into market_llm_cache (engine_key, kind, prompt_key, value)
select s.engine_key, s.kind, s.prompt_key, s.value
from staged_market_llm_cache s
anti join market_llm_cache c
    on c.engine_key = s.engine_key and c.kind = s.kind and c.prompt_key = s.prompt_key
