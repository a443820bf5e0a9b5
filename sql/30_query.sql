-- Queries: read derived state (and the user's freshest events) and rank items. Each public function
-- returns item_id text and score double precision first.

-- Spreads weighted source items over their precomputed neighbour lists; the core of every
-- personalised list.
create function recsql._pair_scores(p_kind "char", p_sources integer[], p_weights double precision[])
returns table (item_key integer, source_key integer, contribution double precision, together integer)
language sql stable parallel safe as $$
    select u.neighbor, src.k, src.w * u.score, u.together
    from (
        select x.k, max(x.w) as w
        from unnest(p_sources, p_weights) as x(k, w)
        where x.k is not null and x.w > 0
        group by x.k
    ) src
    join recsql.neighbor_lists l on l.kind = p_kind and l.item_key = src.k
    cross join lateral unnest(l.neighbors, l.scores, l.together) as u(neighbor, score, together)
$$;

comment on function recsql._pair_scores("char", integer[], double precision[]) is
    'Similarity-weighted contributions of source items to the items on their neighbour lists';

-- A query-time parameter: the transaction's override (set by the server for a user in an A/B test,
-- see recsql.assign_model) or else the settings value.
create function recsql._query_param(p_key text, p_default text) returns text
language sql stable parallel safe as $$
    select coalesce(nullif(current_setting('recsql.' || p_key, true), ''), p_default)
$$;

comment on function recsql._query_param(text, text) is
    'Transaction-local override recsql.<key> of a query-time parameter, else the given settings value';

-- A user's own id followed by the anonymous ids linked to it: their events count as the user's.
create function recsql._user_ids(p_user_id text) returns text[]
language sql stable parallel safe as $$
    select array[p_user_id] || coalesce(array(select a.alias_id from recsql.user_aliases a
                                              where a.user_id = p_user_id order by a.alias_id), '{}')
$$;

comment on function recsql._user_ids(text) is 'The user id and the anonymous ids linked to it by recsql.identify()';

-- The user's recent events, read straight from the log so a committed event counts at once.
create function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select recsql._query_param('history_length', st.history_length::text)::integer as history_length,
               recsql._query_param('history_half_life', st.history_half_life::text)::double precision
                   as history_half_life
        from recsql.settings st
    ), recent as (
        select e.item_id, e.event_type, e.value,
               (row_number() over (order by e.xid desc, e.seq desc) - 1)::integer as rank
        from (
            -- One ordered index scan per id (the user and any linked anonymous ids), then merged.
            select e.item_id, e.event_type, e.value, e.xid, e.seq
            from unnest(recsql._user_ids(p_user_id)) as ids(id)
            cross join lateral (
                select x.item_id, x.event_type, x.value, x.xid, x.seq
                from recsql.events x
                where x.user_id = ids.id
                order by x.xid desc, x.seq desc
                limit (select history_length from s)
            ) e
            order by e.xid desc, e.seq desc
            limit (select history_length from s)
        ) e
    ), per_type as (
        select r.item_id, r.event_type, count(*) as n, avg(r.value) as mean_value, min(r.rank) as rank
        from recent r
        group by r.item_id, r.event_type
    ), per_item as (
        select pt.item_id,
               sum(t.weight * ln(1 + pt.n) / ln(2)
                   * case when t.value_max is null then 1 else coalesce(pt.mean_value / t.value_max, 1) end) as strength,
               min(pt.rank) as rank,
               bool_or(t.is_conversion) as converted
        from per_type pt
        join recsql.event_types t on t.name = pt.event_type
        group by pt.item_id
    )
    select i.item_key,
           p.item_id,
           greatest(p.strength, 0) * power(2::double precision, -p.rank / s.history_half_life),
           p.converted
    from per_item p
    cross join s
    left join recsql.items i on i.item_id = p.item_id
$$;

comment on function recsql._user_sources(text) is
    'Weights of the items in the user''s recent history: damped per-type counts times recency';

-- Checks a list size argument once, with the same message everywhere.
create function recsql._check_k(p_k integer) returns integer
language plpgsql immutable as $$
begin
    if p_k is null or p_k < 1 or p_k > 1000 then
        raise exception 'k must be between 1 and 1000, got %', coalesce(p_k::text, 'null')
            using errcode = '22023';
    end if;
    return p_k;
end
$$;

comment on function recsql._check_k(integer) is 'Returns k, or rejects a missing, zero, negative or huge k';

-- Ranks items for a list of weighted sources, fills up with trending items, never repeats an item.
-- With embeddings (settings.embedding_weight > 0 and vectors for the sources), the score blends the
-- co-occurrence score, scaled to the best one, with the embedding similarity to the sources' taste,
-- whose nearest neighbours also join the candidates; without, it is the co-occurrence score. With
-- embeddings, the last settings.new_item_slots places may go to recently added items nothing
-- co-occurs with yet, the closest to the taste, so that new products get seen (cold start).
create function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable as $$
    with s as (
        select recsql._query_param('embedding_weight', embedding_weight::text)::double precision as w,
               greatest(2 * p_k, 20) as pool,
               least(p_k, recsql._query_param('new_item_slots', new_item_slots::text)::integer) as new_slots,
               recsql._query_param('new_item_window', new_item_window::text)::interval as new_window,
               recsql._query_param('new_item_min_similarity', new_item_min_similarity::text)::double precision
                   as new_min_similarity
        from recsql.settings
    ), new_items as materialized (
        -- Of the 200 newest items added within new_window, those nothing co-occurs with yet:
        -- scored on their embeddings alone, they may take the last new_slots places of the list.
        -- (Bounded first, filtered after: a catalog that adds many items stays one index range.)
        select n.item_key
        from (select i.item_key, i.hidden_at
              from recsql.items i
              -- Scalar subqueries: a gate evaluated once and a bound on the index scan. As a join
              -- filter they were checked per item, which walked the whole catalog whenever fewer
              -- than 200 items were new (or the places were switched off).
              where (select s.w > 0 and s.new_slots > 0 from s)
                and i.created_at >= now() - (select s.new_window from s)
              order by i.created_at desc
              limit 200) n
        where n.hidden_at is null
          and n.item_key <> all (p_excluded)
          and not exists (select 1 from recsql.neighbor_lists l where l.kind = 'v' and l.item_key = n.item_key)
    ), contributions as materialized (
        select ps.item_key, ps.source_key, ps.contribution
        from recsql._pair_scores('v', p_sources, p_weights) ps
        where ps.item_key <> all (p_excluded)
    ), cooc as materialized (
        select c.item_key, sum(c.contribution) as score from contributions c group by c.item_key
    ), emb as materialized (
        select x.item_key, x.similarity
        from s
        cross join lateral recsql._embedding_scores(
            p_sources, p_weights, s.pool,
            array(select c.item_key from (select c.item_key from cooc c order by c.score desc, c.item_key
                                          limit (select pool from s)) c
                  union select n.item_key from new_items n)) x
        where s.w > 0 and x.item_key <> all (p_excluded)
    ), scored as (
        select coalesce(c.item_key, e.item_key) as item_key,
               case when not exists (select 1 from emb) then c.score
                    else (1 - s.w) * coalesce(c.score / nullif((select max(score) from cooc), 0), 0)
                         + s.w * coalesce(e.similarity, 0) end as score,
               c.item_key is null as by_embedding
        from cooc c
        full join emb e on e.item_key = c.item_key
        cross join s
    ), fresh as materialized (
        -- The new items closest to the user's taste, up to new_slots of them.
        select e.item_key, e.similarity as score
        from emb e
        join new_items n on n.item_key = e.item_key
        cross join s
        where e.similarity >= s.new_min_similarity
          and ((p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = e.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock)))
        order by e.similarity desc, e.item_key
        limit (select new_slots from s)
    ), personal as (
        -- Rank on scores alone; the catalog is consulted only to filter, and for the k winners.
        select sc.item_key, sc.score, sc.by_embedding
        from scored sc
        where sc.item_key not in (select h.item_key from recsql.items h where h.hidden_at is not null)
          and ((p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = sc.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock)))
          and sc.item_key not in (select f.item_key from fresh f)
        order by sc.score desc, sc.item_key
        limit p_k - (select count(*) from fresh)
    ), fill as (
        select st.item_key, st.popularity
        from recsql.item_stats st
        join recsql.items i on i.item_key = st.item_key
        where st.popularity > 0
          and i.hidden_at is null
          and (p_category is null or i.category = p_category)
          and (not p_in_stock_only or i.in_stock)
          and st.item_key <> all (p_excluded)
          and st.item_key not in (select item_key from personal)
          and st.item_key not in (select item_key from fresh)
        order by st.popularity desc, st.item_key
        limit p_k
    )
    select r.item_id, r.score, r.reason
    from (
        select i.item_id, p.score,
               coalesce('similar to ' || src.item_id, 'matches your taste') as reason,
               0 as grp, p.score as ord, p.item_key
        from personal p
        join recsql.items i on i.item_key = p.item_key
        left join lateral (
            select c.source_key from contributions c
            where c.item_key = p.item_key
            order by c.contribution desc, c.source_key
            limit 1
        ) top on true
        left join recsql.items src on src.item_key = top.source_key
        union all
        select i.item_id, f.score, 'new, matches your taste', 0, '-infinity'::double precision, f.item_key
        from fresh f join recsql.items i on i.item_key = f.item_key
        union all
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;

comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence blended with embeddings, then trending fill';

-- Personalised top-k for a user from their recent history; trending for users with none.
create function recsql.recommend(
    user_id text,
    k integer default 10,
    category text default null,
    in_stock_only boolean default false,
    exclude_purchased boolean default true,
    exclude_seen boolean default false
) returns table (item_id text, score double precision, reason text)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_recent_excluded integer[];
    v_excluded integer[];
    v_purchased boolean := coalesce(exclude_purchased, true);
    v_seen boolean := coalesce(exclude_seen, false);
begin
    perform recsql._check_k(k);
    if recommend.user_id is null then
        raise exception 'recommend needs a user id' using errcode = '22004';
    end if;
    -- The recent history once: sources, and the recent items to leave out (not folded yet).
    select coalesce(array_agg(s.item_key), '{}'), coalesce(array_agg(s.weight), '{}'),
           coalesce(array_agg(s.item_key) filter (where v_seen or (v_purchased and s.converted)), '{}')
    into v_sources, v_weights, v_recent_excluded
    from recsql._user_sources(recommend.user_id) s
    where s.item_key is not null;
    select coalesce(array_agg(distinct x.item_key), '{}') into v_excluded
    from (
        select u.item_key
        from recsql.user_item_events u
        join recsql.event_types t on t.name = u.event_type
        where u.user_id = any (recsql._user_ids(recommend.user_id)) and (v_seen or (v_purchased and t.is_conversion))
        union all
        select unnest(v_recent_excluded)
    ) x;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_excluded, k, category, coalesce(in_stock_only, false)) r;
end
$$;

comment on function recsql.recommend(text, integer, text, boolean, boolean, boolean) is
    'Personalised recommendations: co-occurrence neighbours of the user''s recent items, trending as fallback';

-- Recommendations for an anonymous session given the items it touched (most recent last).
create function recsql.session_recommend(item_ids text[], k integer default 10, category text default null,
                                         in_stock_only boolean default false)
returns table (item_id text, score double precision, reason text)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_half_life double precision;
begin
    perform recsql._check_k(k);
    select recsql._query_param('history_half_life', history_half_life::text)::double precision
    into v_half_life from recsql.settings;
    select coalesce(array_agg(i.item_key), '{}'),
           coalesce(array_agg(power(2::double precision, -(cardinality(item_ids) - u.pos) / v_half_life)), '{}')
    into v_sources, v_weights
    from unnest(coalesce(item_ids, '{}')) with ordinality as u(id, pos)
    join recsql.items i on i.item_id = u.id;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_sources, k, category, coalesce(in_stock_only, false)) r;
end
$$;

comment on function recsql.session_recommend(text[], integer, text, boolean) is
    'Recommendations for an anonymous session from the items it viewed, most recent last';

-- Reads one item's neighbour list of a kind, best first.
create function recsql._neighbors(p_kind "char", p_item_id text, p_k integer)
returns table (item_id text, score double precision, together integer)
language sql stable parallel safe as $$
    select i.item_id, u.score, u.together
    from recsql.items src
    join recsql.neighbor_lists l on l.kind = p_kind and l.item_key = src.item_key
    cross join lateral unnest(l.neighbors, l.scores, l.together) with ordinality as u(neighbor, score, together, pos)
    join recsql.items i on i.item_key = u.neighbor
    where src.item_id = p_item_id and i.hidden_at is null
    order by u.pos
    limit recsql._check_k(p_k)
$$;

comment on function recsql._neighbors("char", text, integer) is 'Top of an item''s neighbour list of one kind';

-- Similar items by one method; similar_items() is its public face.
create function recsql._similar(p_item_id text, p_k integer, p_method text)
returns table (item_id text, score double precision, together integer)
language plpgsql stable rows 10 as $$
#variable_conflict use_column
declare
    v_key integer;
    v_method text := p_method;
    v_weight double precision;
    v_warm boolean;
    v_pool integer;
begin
    perform recsql._check_k(p_k);
    if v_method is not null and v_method not in ('cooccurrence', 'embedding', 'hybrid') then
        raise exception 'method must be cooccurrence, embedding or hybrid, got "%"', v_method
            using errcode = '22023';
    end if;
    select i.item_key into v_key from recsql.items i where i.item_id = p_item_id;
    if v_key is null then
        return;
    end if;
    if v_method is null then
        -- hybrid when the item has a vector (cold items then still get neighbours)
        v_method := case when exists (select 1 from recsql.item_embeddings e where e.item_key = v_key)
                         then 'hybrid' else 'cooccurrence' end;
    end if;
    if v_method = 'cooccurrence' then
        return query select n.item_id, n.score, n.together from recsql._neighbors('v', p_item_id, p_k) n;
        return;
    end if;
    select recsql._query_param('embedding_weight', embedding_weight::text)::double precision
    into v_weight from recsql.settings;
    v_warm := exists (select 1 from recsql.neighbor_lists l where l.kind = 'v' and l.item_key = v_key);
    v_pool := greatest(4 * p_k, 50);
    return query
    with cooc as (
        select u.neighbor as item_key, u.score, u.together
        from recsql.neighbor_lists l
        cross join lateral unnest(l.neighbors, l.scores, l.together) as u(neighbor, score, together)
        where l.kind = 'v' and l.item_key = v_key
    ), emb as (
        select x.item_key, x.similarity
        from recsql._embedding_scores(array[v_key], array[1::double precision], v_pool,
                                      array(select c.item_key from cooc c)) x
    ), scored as (
        select coalesce(c.item_key, e.item_key) as item_key,
               case when v_method = 'embedding' or not v_warm then coalesce(e.similarity, 0)
                    else (1 - v_weight) * coalesce(c.score / nullif((select max(score) from cooc), 0), 0)
                         + v_weight * coalesce(e.similarity, 0) end as score,
               c.together
        from cooc c
        full join emb e on e.item_key = c.item_key
    )
    select i.item_id, sc.score, coalesce(sc.together, 0)
    from scored sc
    join recsql.items i on i.item_key = sc.item_key
    where sc.item_key <> v_key and i.hidden_at is null
      and (v_method <> 'embedding' or sc.score > 0)
    order by sc.score desc, sc.item_key
    limit p_k;
end
$$;

comment on function recsql._similar(text, integer, text) is
    'Similar items by co-occurrence, embeddings, or both blended (hybrid)';

-- Items similar to the given one: by co-occurrence, by embeddings, or (hybrid) both blended.
create function recsql.similar_items(item_id text, k integer default 10, method text default null)
returns table (item_id text, score double precision, together integer)
language sql stable rows 10 as $$
    select s.item_id, s.score, s.together
    from recsql._similar(similar_items.item_id, similar_items.k, similar_items.method) s
$$;

comment on function recsql.similar_items(text, integer, text) is
    'Similar items by method cooccurrence, embedding or hybrid (default: hybrid when the item has a vector)';

-- Items bought by the same users close to the given item, normalised for popularity.
create function recsql.bought_together(item_id text, k integer default 10)
returns table (item_id text, score double precision, together integer)
language sql stable as $$
    select n.item_id, n.score, n.together from recsql._neighbors('p', bought_together.item_id, bought_together.k) n
$$;

comment on function recsql.bought_together(text, integer) is 'Items bought together with the given one';

-- Popularity decayed from decay_epoch to now: weighted events per half-life as of now.
create function recsql._trending_score(p_popularity numeric) returns double precision
language sql stable parallel safe as $$
    select p_popularity::double precision
           * power(2::double precision, -greatest(-1000, least(1000,
               extract(epoch from now() - s.decay_epoch)::double precision
               / extract(epoch from s.trending_half_life)::double precision)))
    from recsql.settings s
$$;

comment on function recsql._trending_score(numeric) is 'item_stats.popularity scaled to now';

-- Items by time-decayed weighted popularity; score is weighted events per half-life as of now.
create function recsql.trending(k integer default 10, category text default null)
returns table (item_id text, score double precision)
language sql stable as $$
    select i.item_id, recsql._trending_score(st.popularity)
    from recsql.item_stats st
    join recsql.items i on i.item_key = st.item_key
    where st.popularity > 0 and i.hidden_at is null
      and (trending.category is null or i.category = trending.category)
    order by st.popularity desc, st.item_key
    limit recsql._check_k(trending.k)
$$;

comment on function recsql.trending(integer, text) is 'Trending items (time-decayed popularity), optionally in one category';

-- Why an item is recommended to a user: each recent item's contribution.
create function recsql.explain(user_id text, item_id text)
returns table (source_item_id text, contribution double precision, share double precision,
               source_weight double precision, together integer)
language sql stable as $$
    with src as (
        select s.item_key, s.weight from recsql._user_sources(explain.user_id) s where s.item_key is not null
    ), target as (
        select i.item_key from recsql.items i where i.item_id = explain.item_id
    ), c as (
        select ps.source_key, ps.contribution, ps.together
        from recsql._pair_scores('v', (select array_agg(item_key) from src), (select array_agg(weight) from src)) ps
        where ps.item_key = (select item_key from target)
    )
    select i.item_id, c.contribution, c.contribution / nullif(sum(c.contribution) over (), 0), src.weight, c.together
    from c
    join src on src.item_key = c.source_key
    join recsql.items i on i.item_key = c.source_key
    order by c.contribution desc, i.item_id
$$;

comment on function recsql.explain(text, text) is
    'The user''s recent items that make item_id a recommendation, with their contributions and shares';
