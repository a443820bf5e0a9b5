-- Undo 0004.

create function recsql._user_excluded(p_user_id text, p_purchased boolean, p_seen boolean)
returns table (item_key integer)
language sql stable parallel safe as $$
    select x.item_key
    from recsql.user_item_events x
    join recsql.event_types t on t.name = x.event_type
    where x.user_id = any (recsql._user_ids(p_user_id)) and (p_seen or (p_purchased and t.is_conversion))
    union
    select s.item_key
    from recsql._user_sources(p_user_id) s
    where s.item_key is not null and (p_seen or (p_purchased and s.converted))
$$;



comment on function recsql._user_excluded(text, boolean, boolean) is
    'Items the user converted on (or interacted with), folded or still in flight';

create or replace function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select * from recsql.settings
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

create or replace function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable as $$
    with s as (
        select embedding_weight as w, greatest(4 * p_k, 50) as pool from recsql.settings
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
            array(select c.item_key from cooc c order by c.score desc, c.item_key limit (select pool from s))) x
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
        order by sc.score desc, sc.item_key
        limit p_k
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
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;



comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence blended with embeddings, then trending fill';

create or replace function recsql._similar(p_item_id text, p_k integer, p_method text)
returns table (item_id text, score double precision, together integer)
language plpgsql stable as $$
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
    select embedding_weight into v_weight from recsql.settings;
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

create or replace function recsql.session_recommend(item_ids text[], k integer default 10, category text default null,
                                         in_stock_only boolean default false)
returns table (item_id text, score double precision, reason text)
language plpgsql stable as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_half_life double precision;
begin
    perform recsql._check_k(k);
    select history_half_life into v_half_life from recsql.settings;
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

create or replace function recsql.recommend(
    user_id text,
    k integer default 10,
    category text default null,
    in_stock_only boolean default false,
    exclude_purchased boolean default true,
    exclude_seen boolean default false
) returns table (item_id text, score double precision, reason text)
language plpgsql stable as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_excluded integer[];
begin
    perform recsql._check_k(k);
    if recommend.user_id is null then
        raise exception 'recommend needs a user id' using errcode = '22004';
    end if;
    select coalesce(array_agg(s.item_key), '{}'), coalesce(array_agg(s.weight), '{}')
    into v_sources, v_weights
    from recsql._user_sources(recommend.user_id) s
    where s.item_key is not null;
    select coalesce(array_agg(x.item_key), '{}') into v_excluded
    from recsql._user_excluded(recommend.user_id, coalesce(exclude_purchased, true), coalesce(exclude_seen, false)) x;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_excluded, k, category, coalesce(in_stock_only, false)) r;
end
$$;


comment on function recsql.recommend(text, integer, text, boolean, boolean, boolean) is
    'Personalised recommendations: co-occurrence neighbours of the user''s recent items, trending as fallback';

create or replace function recsql.similar_items(item_id text, k integer default 10, method text default null)
returns table (item_id text, score double precision, together integer)
language sql stable as $$
    select s.item_id, s.score, s.together
    from recsql._similar(similar_items.item_id, similar_items.k, similar_items.method) s
$$;



comment on function recsql.similar_items(text, integer, text) is
    'Similar items by method cooccurrence, embedding or hybrid (default: hybrid when the item has a vector)';

create or replace function recsql._weighted_sum(p_vectors vector[], p_weights double precision[]) returns vector
language sql immutable parallel safe as $$
    select array_agg(s.total::real order by s.i)::vector
    from (
        select u.i, sum(u.x * w.w) as total
        from unnest(p_vectors, p_weights) as w(v, w)
        cross join lateral unnest(w.v::real[]) with ordinality as u(x, i)
        group by u.i
    ) s
$$;


comment on function recsql._weighted_sum(vector[], double precision[]) is
    'Weighted sum of vectors: the direction of a recency-weighted taste';

create or replace function recsql._embedding_neighbors(p_space text, p_query vector, p_k integer)
returns table (item_key integer, similarity double precision)
language plpgsql stable as $$
declare
    v_dim integer;
begin
    select dim into v_dim from recsql.embedding_spaces where name = p_space and enabled;
    if v_dim is null or p_query is null or vector_dims(p_query) <> v_dim then
        return;
    end if;
    -- The index returns about ef_search candidates: keep it above k.
    perform set_config('hnsw.ef_search', greatest(40, least(1000, 2 * p_k))::text, true);
    return query execute format(
        'select e.item_key, 1 - (e.embedding::vector(%1$s) <=> $1::vector(%1$s))'
        ' from recsql.item_embeddings e where e.space = %2$L'
        ' order by e.embedding::vector(%1$s) <=> $1::vector(%1$s) limit $2', v_dim, p_space)
    using p_query, p_k;
end
$$;


comment on function recsql._embedding_neighbors(text, vector, integer) is
    'Approximate nearest items (HNSW, cosine) to a vector in one embedding space';

create or replace function recsql._embedding_scores(p_sources integer[], p_weights double precision[], p_n integer,
                                         p_extra integer[] default '{}')
returns table (item_key integer, similarity double precision)
language sql stable as $$
    with src as (
        select x.k, max(x.w) as w from unnest(p_sources, p_weights) as x(k, w) where x.w > 0 group by x.k
    ), taste as (
        select sp.name, sp.weight, recsql._weighted_sum(array_agg(e.embedding), array_agg(src.w)) as v
        from recsql.embedding_spaces sp
        join recsql.item_embeddings e on e.space = sp.name
        join src on src.k = e.item_key
        where sp.enabled and sp.weight > 0
        group by sp.name, sp.weight
    ), candidates as (
        select n.item_key from taste t cross join lateral recsql._embedding_neighbors(t.name, t.v, p_n) n
        union
        select unnest(p_extra)
    )
    select c.item_key, sum(t.weight * (1 - (e.embedding <=> t.v))) / (select sum(weight) from taste)
    from candidates c
    cross join taste t
    join recsql.item_embeddings e on e.space = t.name and e.item_key = c.item_key
    where c.item_key <> all (p_sources)
    group by c.item_key
$$;


comment on function recsql._embedding_scores(integer[], double precision[], integer, integer[]) is
    'Weighted-mean cosine of candidates (nearest neighbours plus p_extra) to the sources'' taste in each space';

drop function recsql.log_served(uuid, text, text, text[], text[], real[], text);
drop function recsql.serve_model(text);
drop function recsql._query_param(text, text);
drop function recsql.model_outcomes(timestamptz);
drop function recsql.assign_model(text);
drop function recsql.set_traffic(text, double precision);
drop table recsql.model_traffic;
drop function recsql.previous_model();
drop function recsql.promote_model(text);
drop function recsql.promotion_gate(text, text, integer);
drop table recsql.evaluations;
drop function recsql.apply_params(jsonb);
drop function recsql._apply_params_to(jsonb, boolean);
drop function recsql.check_params(jsonb, jsonb);
drop function recsql.current_params();
drop table recsql.model_parameters;
drop table recsql.models;
