-- Remove the earlier membership rows of one method from retail_decision_episodes.
delete from retail_decision_episodes where method = $method
