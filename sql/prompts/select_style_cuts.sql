-- Tertile cut points (1/3 and 2/3 quantiles over customers) of each style parameter: the low / medium /
-- high words of the prompts.
select
    quantile_cont(price_sensitivity, [1 / 3, 2 / 3]) as price_sensitivity,
    quantile_cont(discount_sensitivity, [1 / 3, 2 / 3]) as discount_sensitivity,
    quantile_cont(loss_aversion, [1 / 3, 2 / 3]) as loss_aversion,
    quantile_cont(brand_loyalty, [1 / 3, 2 / 3]) as brand_loyalty,
    quantile_cont(variety_seeking, [1 / 3, 2 / 3]) as variety_seeking,
    quantile_cont(basket_size, [1 / 3, 2 / 3]) as basket_size
from customer_style_params
