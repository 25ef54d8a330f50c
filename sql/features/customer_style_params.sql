-- Builds customer_style_params from the frame registered as style_frame (assets/features/style.py).
create or replace table customer_style_params as
select * from style_frame
