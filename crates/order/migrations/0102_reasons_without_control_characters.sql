-- A reason has no control characters but line breaks and tabs (kernel::Text, Chars::Lines);
-- reasons stored before that rule keep restoring once each other one is a space.
UPDATE orders
SET status_reason = coalesce(
        nullif(btrim(regexp_replace(status_reason, '[\u0001-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]', ' ', 'g')), ''),
        '?')
WHERE status_reason ~ '[\u0001-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]';
