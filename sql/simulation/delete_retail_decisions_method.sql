-- Remove the earlier rows of one method from retail_decisions (a new materialization replaces them).
delete from retail_decisions where method = $method
