drop schema recsql cascade;
