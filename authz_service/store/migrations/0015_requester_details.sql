-- What an approver needs to decide a pairing request (#17 item 7), stored with
-- the request: the requester's first message (cut and with hidden characters
-- made visible, domain/display.py), their @handle where the platform has one
-- (Telegram username, Discord username, Slack name; without the "@"), and the
-- channel's platform when the request was made. The display name was already
-- stored. Personal data: a purge deletes the row, an anonymise blanks them
-- (store/users.py).
ALTER TABLE approvals
    ADD COLUMN first_message text NOT NULL DEFAULT '' CHECK (char_length(first_message) <= 2000),
    ADD COLUMN handle        text NOT NULL DEFAULT '' CHECK (char_length(handle) <= 64),
    ADD COLUMN platform      text NOT NULL DEFAULT '';
