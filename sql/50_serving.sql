-- Serving over HTTP: linking anonymous ids to users, and reporting on the lists that were served.

-- Links an anonymous id to a signed-in user so its history counts for the user's recommendations.
create function recsql.identify(anonymous_id text, user_id text) returns text
language plpgsql as $$
#variable_conflict use_variable
declare
    v_user text;
begin
    if anonymous_id is null or user_id is null then
        raise exception 'identify needs an anonymous id and a user id' using errcode = '22004';
    end if;
    if anonymous_id = user_id then
        return user_id;  -- already the same person under the same id
    end if;
    -- Link to the person behind user_id, so links never chain.
    select a.user_id into v_user from recsql.user_aliases a where a.alias_id = identify.user_id;
    v_user := coalesce(v_user, user_id);
    if v_user = anonymous_id then
        return v_user;
    end if;
    -- Ids already linked to the anonymous id move with it.
    update recsql.user_aliases a set user_id = v_user, linked_at = now()
    where a.user_id = anonymous_id and a.alias_id <> v_user;
    delete from recsql.user_aliases a where a.user_id = anonymous_id;
    insert into recsql.user_aliases as a (alias_id, user_id) values (anonymous_id, v_user)
    on conflict (alias_id) do update set user_id = excluded.user_id, linked_at = now();
    return v_user;
end
$$;

comment on function recsql.identify(text, text) is
    'Links an anonymous id to a user: its events count as the user''s; returns the user id it was linked to';

-- Every event that carries the id of a served list, with the item's position in that list.
create view recsql.recommendation_events as
select l.recommendation_id,
       l.surface,
       l.model,
       l.served_at,
       e.user_id,
       e.item_id,
       e.event_type,
       t.is_conversion,
       array_position(l.item_ids, e.item_id) as position,
       coalesce(e.value, i.price) as revenue,
       e.ts
from recsql.events e
join recsql.recommendation_log l on l.recommendation_id = e.recommendation_id
join recsql.event_types t on t.name = e.event_type
left join recsql.items i on i.item_id = e.item_id;

comment on view recsql.recommendation_events is
    'Events attributed to a served list (position is 1-based, null when the item was not on it); '
    'revenue is the event value or else the item price';

-- Click-through and conversion per day, surface and model: what a dashboard plots.
create view recsql.recommendation_daily as
select (l.served_at at time zone 'UTC')::date as day,
       l.surface,
       coalesce(l.model, 'default') as model,
       count(*) as lists_served,
       count(*) filter (where a.clicks > 0) as lists_clicked,
       count(*) filter (where a.conversions > 0) as lists_converted,
       sum(a.clicks)::bigint as clicks,
       sum(a.conversions)::bigint as conversions,
       sum(a.revenue) as revenue,
       (count(*) filter (where a.clicks > 0))::double precision / count(*) as ctr,
       (count(*) filter (where a.conversions > 0))::double precision / count(*) as conversion_rate
from recsql.recommendation_log l
cross join lateral (
    select count(*) filter (where e.event_type = 'click') as clicks,
           count(*) filter (where e.is_conversion) as conversions,
           coalesce(sum(e.revenue) filter (where e.is_conversion), 0) as revenue
    from recsql.recommendation_events e
    where e.recommendation_id = l.recommendation_id
) a
group by 1, 2, 3;

comment on view recsql.recommendation_daily is
    'Per UTC day, surface and model: lists served, share clicked (ctr), share converted, revenue';
