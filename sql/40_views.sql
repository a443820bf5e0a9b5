-- Stable views for analysts and BI tools. Column names here are a contract: add, never rename.

-- user_id in the database's collation, as in recsql.events (the table's is "C": see user_windows).
create view recsql.user_items as
select x.user_id collate "default" as user_id,
       i.item_id,
       greatest(0, sum(t.weight * ln(1 + x.n) / ln(2)
           * case when t.value_max is null then 1
                  else coalesce((x.value_sum / x.n)::double precision / t.value_max, 1) end)) as strength,
       sum(x.n)::bigint as events,
       min(x.first_ts) as first_ts,
       max(x.last_ts) as last_ts,
       bool_or(t.is_conversion) as converted
from recsql.user_item_events x
join recsql.event_types t on t.name = x.event_type
join recsql.items i on i.item_key = x.item_key
group by x.user_id, i.item_id;

comment on view recsql.user_items is
    'Interaction strength per user and item: sum over types of weight * log2(1 + count), floored at 0';

create view recsql.item_popularity as
select i.item_id,
       i.title,
       i.category,
       st.n_users,
       st.n_events,
       recsql._trending_score(st.popularity) as trending_score
from recsql.item_stats st
join recsql.items i on i.item_key = st.item_key;

comment on view recsql.item_popularity is 'Per item: distinct users, events, and trending score as of now';

-- Pairs are stored once (item_a < item_b); this lists each from both sides: every partner of an item.
create view recsql.item_pair_sides as
select p.kind, p.item_a as item_key, p.item_b as partner, p.n from recsql.item_pairs p
union all
select p.kind, p.item_b, p.item_a, p.n from recsql.item_pairs p;

comment on view recsql.item_pair_sides is
    'Each stored item pair from both sides: an item''s partners are the rows with its item_key';

create view recsql.item_neighbors as
select a.item_id,
       b.item_id as neighbor_id,
       case p.kind when 'v' then 'cooccurrence' else 'bought_together' end as kind,
       p.n as together,
       recsql._pair_score(p.n, sa.n_users, sb.n_users, 'cosine') as cosine
from recsql.item_pair_sides p
join recsql.items a on a.item_key = p.item_key
join recsql.items b on b.item_key = p.partner
join recsql.item_stats sa on sa.item_key = p.item_key
join recsql.item_stats sb on sb.item_key = p.partner;

comment on view recsql.item_neighbors is 'Every item pair, from both sides, with its count and cosine similarity';

create view recsql.fold_status as
select (select count(*) from recsql.event_inbox) as pending_statements,
       (select coalesce(sum(n), 0) from recsql.event_inbox)::bigint as pending_events,
       f.folded_events,
       f.last_fold_at,
       extract(epoch from now() - f.last_fold_at)::double precision as seconds_since_fold,
       (select count(*) from recsql.neighbor_dirty) as pending_lists,
       (select min(marked_at) from recsql.neighbor_dirty) as oldest_pending_list,
       f.cooc_horizon,
       f.maintained_at,
       -- Each part of a fold's queued pairs counts its events; pending until all parts are added.
       (select coalesce(max(h.n), 0) from (select sum(q.events) as n from recsql.pair_queue q group by q.part) h)::bigint
           as pending_pair_events
from recsql.fold_state f;

comment on view recsql.fold_status is 'Folder progress: events waiting to reach derived state, and when it last ran';

-- Vectors per space with the type the HNSW index is built on, so that
-- `order by embedding <=> (select ...) limit 10` uses the index.
create view recsql.behavior_embeddings as
select i.item_id, e.embedding::vector(64) as embedding, e.updated_at
from recsql.item_embeddings e
join recsql.items i on i.item_key = e.item_key
where e.space = 'behavior';

comment on view recsql.behavior_embeddings is 'Behaviour vectors (64-d by default) by item id, for nearest-neighbour SQL';

create view recsql.text_embeddings as
select i.item_id, e.embedding::vector(384) as embedding, e.updated_at
from recsql.item_embeddings e
join recsql.items i on i.item_key = e.item_key
where e.space = 'text';

comment on view recsql.text_embeddings is 'Text vectors (all-MiniLM-L6-v2, 384-d) by item id, for nearest-neighbour SQL';
