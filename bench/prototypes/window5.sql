-- PROTOTYPE, bench databases only: halve the pair windows (a tuning choice with a quality cost).
update recsql.settings set cooc_window = 5, purchase_window = 5;
