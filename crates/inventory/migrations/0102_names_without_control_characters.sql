-- A product name is one line without control characters (kernel::Text, Chars::Line); names
-- stored before that rule keep restoring once each such character is a space.
UPDATE products
SET name = coalesce(nullif(btrim(regexp_replace(name, '[\u0001-\u001F\u007F-\u009F\u2028\u2029]', ' ', 'g')), ''), '?')
WHERE name ~ '[\u0001-\u001F\u007F-\u009F\u2028\u2029]';
